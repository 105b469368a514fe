//! The run controllers, one per run kind: for a decided run, its
//! assignments, its member runs ([`super::member_run`]), and the fold of
//! what agents report into its status ([`super::status`]); on deletion,
//! its member runs and assignments go first (the finalizer).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use tekfed_api::runs::RunStatus;
use tekfed_api::tekton::{TektonRun, is_final};
use tekfed_api::{PlacementMode, RunAssignment, RunAssignmentSpec, RunRef};
use tekfed_runtime::connect::{drop_managed_fields, tekton_resource};

use super::member_run::ensure_member_run;
use super::status as run_status;
use super::{Error, FINALIZER, FederatedRun, RunContext, kube_error, now, owner};
use crate::errors::log_outcome;

/// Runs of one kind reconciled at once: unbounded (0), measured. A run's
/// reconcile holds its slot while it waits on a member's API server, and in
/// a burst those are slow (Tekton is reconciling there too): with 32 slots
/// `make bench` released the 300-run burst at 5.8–6.1 runs/s over three
/// runs, unbounded at 8.5 (8.8 before the limit). The dispatcher's 32
/// writes in flight already pace how fast runs are decided.
const CONCURRENCY: u16 = 0;

/// The controller for one run kind (its store feeds the dispatcher).
pub fn controller<K: FederatedRun>(ctx: &RunContext) -> Controller<K> {
    let runs: Api<K> = Api::all(ctx.hub.clone());
    let (reader, writer) = reflector::store();
    let stream = watcher(runs, watcher::Config::default())
        .default_backoff()
        .modify(drop_managed_fields)
        .reflect(writer)
        .applied_objects();
    Controller::for_stream(stream, reader)
        .with_config(controller::Config::default().concurrency(CONCURRENCY))
        .reconcile_on(ctx.assignment_changes::<K>())
}

/// Run one kind's controller until the hub stops.
pub async fn run<K: FederatedRun>(controller: Controller<K>, ctx: Arc<RunContext>) {
    controller
        .run(reconcile::<K>, error_policy::<K>, ctx)
        .for_each(|result| log_outcome(K::FEDERATED_KIND, "runs", result))
        .await;
}

fn error_policy<K: FederatedRun>(
    run: Arc<K>,
    error: &kube::runtime::finalizer::Error<Error>,
    ctx: Arc<RunContext>,
) -> Action {
    use kube::runtime::finalizer::Error as F;
    let conflict = match error {
        F::ApplyFailed(e) | F::CleanupFailed(e) => e.is_conflict(),
        F::AddFinalizer(kube::Error::Api(s)) | F::RemoveFinalizer(kube::Error::Api(s)) => {
            s.code == 409
        }
        _ => false,
    };
    // A write that lost a race to another writer is not a failure of the
    // request: read again and retry at the first wait, without backing off
    // (in a burst, runs and their assignments change under the hub often).
    let wait = if conflict {
        ctx.retries.first()
    } else {
        ctx.retries
            .failed(ObjectRef::from_obj(run.as_ref()).erase())
    };
    tracing::info!(kind = K::FEDERATED_KIND, ns = run.namespace().unwrap_or_default(), name = %run.name_any(), %error, retry_in = ?wait, "retrying");
    Action::requeue(wait)
}

#[tracing::instrument(skip(run, ctx), fields(kind = K::FEDERATED_KIND, namespace = %run.namespace().unwrap_or_default(), name = %run.name_any()))]
async fn reconcile<K: FederatedRun>(
    run: Arc<K>,
    ctx: Arc<RunContext>,
) -> Result<Action, kube::runtime::finalizer::Error<Error>> {
    let api: Api<K> = Api::namespaced(ctx.hub.clone(), &run.namespace().unwrap_or_default());
    let key = ObjectRef::from_obj(run.as_ref()).erase();
    let action = finalizer(&api, FINALIZER, run, |event| async {
        match event {
            Finalizer::Apply(run) => apply(run.as_ref(), &ctx).await,
            Finalizer::Cleanup(run) => cleanup(run.as_ref(), &ctx).await,
        }
    })
    .await?;
    ctx.retries.succeeded(&key);
    Ok(action)
}

/// A live run: its assignments and member runs made, or what they wait
/// for said on the run, and what agents report folded into its status.
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
    let mut assignments = Vec::new();
    for cluster in &clusters {
        let api = ctx.assignment_api(cluster);
        let stored = match ctx.assignment(cluster, &uid) {
            Some(assignment) => Some(assignment.as_ref().clone()),
            // Not seen yet: only the API server can say it does not exist.
            None => api.get_opt(&uid).await.map_err(kube_error(
                run,
                format!("reading the assignment on {cluster}"),
            ))?,
        };
        let assignment = match stored {
            Some(assignment) => assignment,
            None => {
                let assignment = RunAssignment::new(
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
                match api.create(&PostParams::default(), &assignment).await {
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
        if let Some(revoked) = assignment.status.as_ref().filter(|s| s.is_revoked())
            && run.placement().mode == PlacementMode::One
        {
            let previous = status.cloned().unwrap_or_default();
            if previous.attempts.len() >= assignment.spec.attempt.max(1) as usize {
                // The move off this cluster is folded and the run was
                // scheduled here again.
                return replace_revoked(run, cluster, &assignment, ctx).await;
            }
            // Taken off this cluster by the dispatcher: fold the move.
            let next = run_status::revoked(
                &previous,
                cluster,
                assignment.spec.attempt,
                revoked,
                run.on_cluster_lost(),
                now(),
            );
            if run_status::changed(&previous, &next) {
                write_status(run, ctx, next).await?;
                ctx.members.schedule.notify_one();
                // What it needed there may be needed no more.
                ctx.deps.sweep.notify_one();
            }
            return Ok(Action::await_change());
        }
        if let Some(revoked) = assignment.status.as_ref().filter(|s| s.is_revoked())
            && run.placement().mode == PlacementMode::All
            && !revoked.phase.is_some_and(is_final)
        {
            // A copy of a `mode: All` run its cluster lost (or removed):
            // failed in the fold, or, when the run asks to be rescheduled,
            // run again on that cluster once it is back.
            if let Some(action) = rerun_copy(run, cluster, &assignment, revoked, ctx).await? {
                return Ok(action);
            }
            assignments.push((cluster.clone(), assignment.status.clone()));
            continue;
        }
        match ensure_member_run(run, cluster, &assignment, ctx).await {
            Ok(()) => {}
            Err(Error::Rejected { message }) => {
                // The member answered for the run: its copy there ended
                // before it began. Written where the agent reports a copy
                // that ended, so both placement modes fold it as one.
                tracing::info!(%cluster, %message, "the member refused the run");
                let mut ended = assignment.clone();
                let report = ended.status.get_or_insert_with(Default::default);
                report.phase = Some(tekfed_api::runs::RunPhase::Failed);
                report.run_status = Some(run_status::rejected(&message, &now()));
                ctx.assignment_api(cluster)
                    .replace_status(&ended.name_any(), &PostParams::default(), &ended)
                    .await
                    .map_err(kube_error(
                        run,
                        format!("recording that {cluster} refused the run"),
                    ))?;
                // Folded when the assignment's change comes back.
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
            Err(e) => {
                let Some(condition) = e.blocked(now()) else {
                    return Err(e);
                };
                // Something only the hub sees keeps the member run from
                // being made: say so on the run, and try again.
                tracing::info!(%cluster, reason = %condition.reason, message = %condition.message, "member run waits");
                let mut status = status.cloned().unwrap_or_default();
                if run_status::set_blocked(&mut status, condition) {
                    write_status(run, ctx, status).await?;
                }
                return Ok(Action::requeue(Duration::from_secs(5)));
            }
        }
        assignments.push((cluster.clone(), assignment.status));
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
    let folded = run_status::fold(
        run.placement().mode,
        run.on_cluster_lost(),
        &base,
        &assignments,
        now(),
    );
    if run_status::changed(&previous, &folded) {
        write_status(run, ctx, folded.clone()).await?;
        if folded.phase.is_some_and(is_final) {
            ctx.members.schedule.notify_one();
            ctx.deps.sweep.notify_one();
        }
    }
    Ok(Action::requeue(Duration::from_secs(60)))
}

/// A `mode: All` copy on a lost cluster, for a run that asks to be
/// rescheduled: the loss is recorded in `attempts`, then, once the cluster
/// is Ready again, the revoked assignment makes way for a new one (the
/// next attempt), and a new copy is made there (the old one, told apart by
/// its attempt label, ended and removed first). `Some` when something was
/// done and the run is looked at again; `None` to fold the copy as it is.
async fn rerun_copy<K: FederatedRun>(
    run: &K,
    cluster: &str,
    assignment: &RunAssignment,
    revoked: &tekfed_api::RunAssignmentStatus,
    ctx: &RunContext,
) -> Result<Option<Action>, Error> {
    let reason = revoked.revoked_reason.clone().unwrap_or_default();
    if run.on_cluster_lost() != tekfed_api::runs::OnClusterLost::Reschedule
        || reason == "ClusterRemoved"
    {
        return Ok(None);
    }
    let previous = run.run_status().cloned().unwrap_or_default();
    let recorded = previous.attempts.iter().any(|a| {
        a.cluster == cluster && revoked.revoked_time.as_ref().is_none_or(|t| &a.time >= t)
    });
    if !recorded {
        let mut next = previous.clone();
        next.attempts.push(tekfed_api::runs::RunAttempt {
            cluster: cluster.to_owned(),
            reason,
            time: now(),
        });
        write_status(run, ctx, next).await?;
        return Ok(Some(Action::requeue(Duration::from_millis(100))));
    }
    let back = ctx
        .clusters
        .get(&ObjectRef::new(cluster))
        .is_some_and(|mc| {
            mc.metadata.deletion_timestamp.is_none()
                && mc.status.as_ref().is_some_and(|s| s.is_ready())
        });
    if !back {
        return Ok(None);
    }
    replace_revoked(run, cluster, assignment, ctx)
        .await
        .map(Some)
}

/// A revoked assignment (never released, or its run cancelled) makes way
/// for a new one with the next attempt, once the move is recorded and the
/// run placed on that cluster again. The only delete of an assignment
/// besides the run's own deletion: revoking never deletes.
async fn replace_revoked<K: FederatedRun>(
    run: &K,
    cluster: &str,
    assignment: &RunAssignment,
    ctx: &RunContext,
) -> Result<Action, Error> {
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: assignment.uid(),
            resource_version: assignment.resource_version(),
        }),
        ..Default::default()
    };
    ctx.assignment_api(cluster)
        .delete(&assignment.name_any(), &params)
        .await
        .map_err(kube_error(
            run,
            format!("replacing the revoked assignment on {cluster}"),
        ))?;
    Ok(Action::requeue(Duration::from_millis(100)))
}

/// Deleting a federated run deletes its member runs and assignments.
async fn cleanup<K: FederatedRun>(run: &K, ctx: &RunContext) -> Result<Action, Error> {
    let uid = run.uid().unwrap_or_default();
    ctx.written
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&uid);
    let mut clusters = run_status::decided_clusters(run.run_status());
    // Clusters it was moved off keep a revoked assignment (and maybe a copy).
    clusters.extend(
        run.run_status()
            .into_iter()
            .flat_map(|s| s.attempts.iter().map(|a| a.cluster.clone())),
    );
    clusters.sort();
    clusters.dedup();
    for cluster in clusters {
        if let Ok(conn) = ctx.members.connection(&cluster) {
            let api: Api<TektonRun> = Api::namespaced_with(
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
        match ctx
            .assignment_api(&cluster)
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
    ctx.deps.sweep.notify_one();
    Ok(Action::await_change())
}

/// Write a run's status with its resourceVersion as precondition: if the
/// run changed since it was read, nothing is written and it is read again.
pub(super) async fn write_status<K: FederatedRun>(
    run: &K,
    ctx: &RunContext,
    status: RunStatus,
) -> Result<(), Error> {
    let api: Api<K> = Api::namespaced(ctx.hub.clone(), &run.namespace().unwrap_or_default());
    let events = super::events::transitions(run.run_status(), &status);
    let mut updated = run.clone();
    updated.set_run_status(status);
    let written = api
        .replace_status(&run.name_any(), &PostParams::default(), &updated)
        .await
        .map_err(kube_error(run, "writing the status"))?;
    publish(ctx, run, events);
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

/// Where a run's Events go: the run, or for the shadow of a native run
/// (`tekfed_api::native`), the native run the user made, so `kubectl
/// describe taskrun` shows them.
fn event_target<K: FederatedRun>(run: &K) -> k8s_openapi::api::core::v1::ObjectReference {
    let native = run
        .labels()
        .contains_key(tekfed_api::native::LABEL_NATIVE)
        .then(|| {
            run.owner_references()
                .iter()
                .find(|o| o.controller == Some(true))
        })
        .flatten();
    match native {
        Some(owner) => k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some(owner.api_version.clone()),
            kind: Some(owner.kind.clone()),
            name: Some(owner.name.clone()),
            namespace: run.namespace(),
            uid: Some(owner.uid.clone()),
            ..Default::default()
        },
        None => run.object_ref(&()),
    }
}

/// Publish a written status's Events in the background, in order: the
/// reconcile does not wait for them, and one that fails is logged, not
/// retried (an Event is a report, not state).
fn publish<K: FederatedRun>(ctx: &RunContext, run: &K, events: Vec<super::events::RunEvent>) {
    if events.is_empty() {
        return;
    }
    let recorder = ctx.recorder.clone();
    let reference = event_target(run);
    tokio::spawn(async move {
        for event in events {
            let event = kube::runtime::events::Event {
                type_: if event.warning {
                    kube::runtime::events::EventType::Warning
                } else {
                    kube::runtime::events::EventType::Normal
                },
                reason: event.reason,
                note: Some(event.note),
                action: "Reconcile".into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::warn!(error = %crate::errors::one_line(&e), reason = %event.reason, "could not publish an event");
            }
        }
    });
}
