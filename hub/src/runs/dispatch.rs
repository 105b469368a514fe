//! The dispatcher: one scheduling loop for both run kinds. Each round it
//! counts runs by phase and by cluster, revokes the assignments of runs on
//! clusters being drained or lost ([`super::moves`]), asks the
//! [`super::scheduler`] where queued runs go, and writes each decision (or
//! why a run waits) into the run's status before anything is created on a
//! member.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::ResourceExt;
use kube::api::PostParams;
use kube::runtime::reflector::Store;
use tekfed_api::guard;
use tekfed_api::runs::{RunPhase, RunStatus};
use tekfed_api::tekton::is_final;
use tekfed_api::{
    ClusterLoad, FederatedPipelineRun, FederatedTaskRun, PlacementMode, RunPlacement,
};

use super::reconcile::write_status;
use super::scheduler::{ClusterView, Decision, RunRequest, Scheduler};
use super::status as run_status;
use super::{Error, FINALIZER, FederatedRun, RunContext, member_run, moves, now};
use crate::errors::one_line;
use crate::metrics::{ClusterLabel, PhaseLabel};
use crate::placement::Member;

/// Runs an agent reports on its cluster (running and pending), as the
/// scheduler counts them. The schema bounds each figure, but the hub does
/// not rely on it: a negative figure counts as none, and the sum saturates
/// instead of overflowing.
fn reported_runs(load: &ClusterLoad) -> u64 {
    let runs = load.running.max(0).saturating_add(load.pending.max(0));
    u64::try_from(runs).unwrap_or(0)
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
    /// For a run waiting for a cluster, whether what it needs is on the
    /// hub ([`crate::dependencies`]): `Ok` with the `DependenciesReady`
    /// message, or why it cannot be scheduled yet.
    dependencies: Option<Result<String, (&'static str, String)>>,
    /// For a run waiting for a cluster, why its template is too big to
    /// carry anywhere ([`member_run::too_large`]): it fails at once.
    too_large: Option<String>,
    /// For a run waiting for a cluster, the members that do not allow it
    /// (their `spec.tenancy`), with why.
    refused: BTreeMap<String, String>,
    /// The user cancelled it (`spec.template.spec.status`).
    cancelled: bool,
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
    // What each member allows, once per round (not once per waiting run).
    let clusters = ctx.clusters.state();
    let members: Vec<(String, &guard::Tenancy)> = clusters
        .iter()
        .map(|mc| (mc.name_any(), &mc.spec.tenancy))
        .collect();
    for run in store.state() {
        let phase = run.run_status().and_then(|s| s.phase);
        phases.add(phase.unwrap_or(RunPhase::Queued));
        if phase.is_some_and(is_final) {
            continue;
        }
        let undecided = run_status::decided_clusters(run.run_status()).is_empty();
        let dependencies = undecided.then(|| {
            let ns = run.namespace().unwrap_or_default();
            let closure = ctx.deps.closure(K::KIND, &ns, &run.template().spec);
            match closure.blocked(&ns) {
                Some(blocked) => Err(blocked),
                None => Ok(closure.resolved_message()),
            }
        });
        // Overrides are not applied here: the member run is checked again,
        // rendered, before it is created, and the member's guard once more.
        let refused = if undecided {
            guard::refusals(
                &members,
                K::KIND.tekton_kind(),
                &run.namespace().unwrap_or_default(),
                &run.template().spec,
            )
        } else {
            BTreeMap::new()
        };
        let too_large = undecided
            .then(|| member_run::too_large(run.template(), run.overrides()))
            .flatten();
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
            dependencies,
            too_large,
            refused,
            cancelled: run.cancel().is_some(),
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
    // Until the hub's objects are listed, a run's dependencies would look missing.
    ctx.deps.wait_until_ready().await;
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
    let mut waiting = Vec::new();
    let mut too_large = Vec::new();
    let mut cancelled = Vec::new();
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
                if entry.cancelled {
                    // Ends now: it does not wait for a slot to be cancelled in.
                    cancelled.push(entry);
                    continue;
                }
                if let Some(message) = &entry.too_large {
                    // Cannot work on any cluster: fails, holds nothing.
                    too_large.push((entry, message));
                    continue;
                }
                if let Some(Err(blocked)) = &entry.dependencies {
                    // Needs what is not on the hub: not a candidate, holds nothing.
                    waiting.push((entry, blocked));
                    continue;
                }
                queue.push(RunRequest {
                    key: entry.key.clone(),
                    created: entry.created,
                    placement: entry.placement.clone(),
                    refused: entry.refused.clone(),
                });
            }
        }
    }
    evacuate(ctx, &all).await;
    ctx.members.set_active_runs(&active);
    publish_metrics(ctx, phases, &active);
    ctx.metrics
        .queue_depth
        .set((queue.len() + waiting.len()) as i64);
    let waits = waiting
        .into_iter()
        .filter_map(|(entry, (reason, message))| {
            let current = entry.status.as_ref().and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == run_status::DEPENDENCIES_READY)
            });
            if entry.status.as_ref().and_then(|s| s.phase) == Some(RunPhase::Queued)
                && current.is_some_and(|c| {
                    c.status == "False" && c.reason == *reason && c.message == *message
                })
            {
                return None;
            }
            let status =
                run_status::waiting_for_dependencies(entry.status.as_ref(), reason, message, now());
            Some((entry, status))
        });
    let mut waits: Vec<_> = waits.collect();
    waits.extend(too_large.into_iter().map(|(entry, message)| {
        let status = run_status::refused(
            entry.status.as_ref(),
            member_run::TEMPLATE_TOO_LARGE,
            message,
            now(),
        );
        (entry, status)
    }));
    waits.extend(cancelled.into_iter().map(|entry| {
        (
            entry,
            run_status::cancelled_in_queue(entry.status.as_ref(), now()),
        )
    }));
    if queue.is_empty() && waits.is_empty() {
        return;
    }
    let clusters = ctx.clusters.state();
    let views = clusters.iter().map(|mc| {
        let name = mc.name_any();
        let status = mc.status.clone().unwrap_or_default();
        let reported = status.load.as_ref().map(reported_runs).unwrap_or(0);
        let hub_count = active.get(&name).copied().unwrap_or(0).max(0) as u64;
        ClusterView {
            member: Member {
                name: name.clone(),
                labels: mc.labels().clone(),
                taints: mc.spec.taints.clone(),
            },
            ready: status.is_ready(),
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
    let writes = decisions.into_iter().filter_map(|scheduled| {
        let entry = *by_key.get(scheduled.key.as_str())?;
        let generation = None;
        match scheduled.decision {
            Decision::Assign(clusters) => {
                let mut status = run_status::scheduled(
                    entry.status.as_ref(),
                    entry.placement.mode,
                    &clusters,
                    &scheduled.candidates,
                    generation,
                    now(),
                );
                if let Some(Ok(message)) = &entry.dependencies {
                    run_status::set_dependencies_ready(&mut status, message, now());
                }
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
                let mut status = run_status::queued(
                    entry.status.as_ref(),
                    reason.reason(),
                    &reason.message(),
                    generation,
                    now(),
                );
                if let Some(Ok(message)) = &entry.dependencies {
                    run_status::set_dependencies_ready(&mut status, message, now());
                }
                Some((entry, status))
            }
        }
    });
    let results = futures::stream::iter(writes.chain(waits))
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

/// Revoke the assignments of runs on clusters being drained or lost (see
/// [`super::moves`]): a status write, conditional on the resourceVersion
/// read, never a delete. Their run controllers then move or fail them.
async fn evacuate(ctx: &RunContext, all: &[Entry]) {
    let clusters = ctx.clusters.state();
    let leaving = moves::leaving(
        clusters.iter().map(|c| c.as_ref()),
        ctx.graces,
        k8s_openapi::jiff::Timestamp::now(),
    );
    if leaving.is_empty() {
        return;
    }
    let targets = all.iter().flat_map(|entry| {
        let status = entry
            .status
            .as_ref()
            .filter(|s| !entry.deleting && !s.phase.is_some_and(is_final));
        // `mode: One`: its cluster; `mode: All`: each copy's.
        let clusters = match status {
            Some(_) => run_status::decided_clusters(status),
            None => Vec::new(),
        };
        let leaving = &leaving;
        clusters
            .into_iter()
            .filter_map(move |cluster| Some((entry, cluster.clone(), *leaving.get(&cluster)?)))
    });
    futures::stream::iter(targets)
        .for_each_concurrent(16, |(entry, cluster, why)| async move {
            let api = ctx.assignment_api(&cluster);
            // From the store: if it lags, the revoke's precondition fails
            // and the next round looks again.
            let assignment = ctx.assignment(&cluster, &entry.uid).map(|r| r.as_ref().clone());
            let step = match entry.placement.mode {
                PlacementMode::One => {
                    moves::step(why, assignment.as_ref().map(|r| r.status.as_ref()))
                }
                PlacementMode::All => {
                    moves::step_all(why, assignment.as_ref().map(|r| r.status.as_ref()))
                }
            };
            let Some(mut assignment) = assignment.filter(|_| step == moves::Step::Revoke) else {
                return;
            };
            let status = assignment.status.get_or_insert_with(Default::default);
            status.revoked = Some(true);
            status.revoked_reason = Some(why.reason().to_owned());
            status.revoked_time = Some(now());
            // The precondition is the resourceVersion read: if the agent
            // released the run meanwhile, this fails and the run stays.
            match api
                .replace_status(&assignment.name_any(), &PostParams::default(), &assignment)
                .await
            {
                Ok(_) => tracing::info!(run = %entry.key, %cluster, reason = why.reason(), "assignment revoked; the run moves"),
                Err(e) => tracing::debug!(run = %entry.key, %cluster, error = %one_line(&e), "assignment not revoked; looked at again next round"),
            }
        })
        .await;
}

fn publish_metrics(ctx: &RunContext, phases: &PhaseCounts, active: &BTreeMap<String, i64>) {
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
            .map(|l| l.running.max(0).saturating_add(l.pending.max(0)))
            .unwrap_or(0);
        let ready = status.is_ready();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn load(running: i64, pending: i64) -> ClusterLoad {
        ClusterLoad {
            running,
            pending,
            ..Default::default()
        }
    }

    #[test]
    fn reported_runs_never_overflow_nor_go_negative() {
        assert_eq!(reported_runs(&load(3, 4)), 7);
        assert_eq!(reported_runs(&load(i64::MAX, i64::MAX)), i64::MAX as u64);
        assert_eq!(reported_runs(&load(i64::MAX, 1)), i64::MAX as u64);
        assert_eq!(reported_runs(&load(-1, 5)), 5);
        assert_eq!(reported_runs(&load(i64::MIN, i64::MIN)), 0);
    }
}
