//! The sweep: every place (cluster and namespace) holds exactly what its
//! unfinished runs need.
//!
//! Each round it works out, from the run stores, what the unfinished runs
//! decided for each place need (their closures, [`super::closure`]); puts
//! it there if a hub object changed since it was carried (no request when
//! nothing did); and removes tekfed's copies no such run needs. It runs
//! every ten seconds and when a run finishes, moves or goes.
//!
//! What may be on a member: what this hub carried ([`Dependencies::carried`]),
//! the Tekton copies made for runs that the member watches see, and, after
//! a restart, everything any stored run (finished ones too) names on the
//! clusters it was decided for: each is looked at once, and removed if it
//! is tekfed's and unneeded.
//!
//! Removal never races a run being given what it needs: both hold the
//! place's lock, and a carry since the sweep read the runs (the place's
//! count moved) skips removal there until the next round.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::reflector::Store;
use tekfed_api::tekton::is_final;
use tekfed_api::{FederatedPipelineRun, FederatedTaskRun};

use super::carry::{carry, remove, template_wanted_there};
use super::{Dep, DepKind, Dependencies, Place};
use crate::ownership::{LABEL_NAME, LABEL_NAMESPACE, LABEL_RUN_DEPENDENCY};
use crate::runs::status::decided_clusters;
use crate::runs::{FederatedRun, RunContext};

/// How often places are swept when nothing wakes the sweep.
const INTERVAL: Duration = Duration::from_secs(10);

/// Run the sweep until the hub stops.
pub async fn sweep(
    ctx: Arc<RunContext>,
    task_runs: Store<FederatedTaskRun>,
    pipeline_runs: Store<FederatedPipelineRun>,
) {
    let _ = task_runs.wait_until_ready().await;
    let _ = pipeline_runs.wait_until_ready().await;
    let _ = ctx.clusters.wait_until_ready().await;
    ctx.deps.wait_until_ready().await;
    // After a restart: whatever any stored run names, where it ran.
    let mut unchecked = BTreeSet::new();
    named_by_all(&task_runs, &ctx.deps, &mut unchecked);
    named_by_all(&pipeline_runs, &ctx.deps, &mut unchecked);
    loop {
        round(&ctx, &task_runs, &pipeline_runs, &mut unchecked).await;
        let _ = tokio::time::timeout(INTERVAL, ctx.deps.sweep.notified()).await;
    }
}

async fn round(
    ctx: &RunContext,
    task_runs: &Store<FederatedTaskRun>,
    pipeline_runs: &Store<FederatedPipelineRun>,
    unchecked: &mut BTreeSet<(Place, Dep)>,
) {
    let deps = &ctx.deps;
    // The carry counts first, then the runs: a carry after this point
    // shows as a changed count.
    let mut counts: HashMap<Place, u64> = HashMap::new();
    let locks: Vec<(Place, Arc<tokio::sync::Mutex<u64>>)> = deps
        .locks
        .iter()
        .map(|e| (e.key().clone(), e.value().clone()))
        .collect();
    for (place, lock) in locks {
        counts.insert(place, *lock.lock().await);
    }
    let mut needed: BTreeMap<Place, BTreeSet<Dep>> = BTreeMap::new();
    needed_by_unfinished(task_runs, deps, &mut needed);
    needed_by_unfinished(pipeline_runs, deps, &mut needed);

    let mut present: BTreeMap<Place, BTreeSet<Dep>> = BTreeMap::new();
    for entry in deps.carried.iter() {
        let (place, dep) = entry.key();
        present
            .entry(place.clone())
            .or_default()
            .insert(dep.clone());
    }
    for (place, dep) in unchecked.iter() {
        present
            .entry(place.clone())
            .or_default()
            .insert(dep.clone());
    }
    for mc in ctx.clusters.state() {
        let cluster = mc.name_any();
        let Ok(conn) = ctx.members.connection(&cluster) else {
            continue;
        };
        for (kind, store) in &conn.stores {
            let dep_kind = match *kind {
                "Task" => DepKind::Task,
                "Pipeline" => DepKind::Pipeline,
                "StepAction" => DepKind::StepAction,
                _ => continue,
            };
            for copy in store.state() {
                let labels = copy.labels();
                if labels.get(LABEL_RUN_DEPENDENCY).map(String::as_str) != Some("true") {
                    continue;
                }
                let (Some(ns), Some(name)) = (labels.get(LABEL_NAMESPACE), labels.get(LABEL_NAME))
                else {
                    continue;
                };
                present
                    .entry((cluster.clone(), ns.clone()))
                    .or_default()
                    .insert(Dep::new(dep_kind, name));
            }
        }
    }

    let places: BTreeSet<Place> = needed.keys().chain(present.keys()).cloned().collect();
    for place in places {
        if ctx.members.connection(&place.0).is_err() {
            // Unreachable (or gone): looked at again once it is back.
            continue;
        }
        let lock = deps.lock(&place);
        let count = lock.lock().await;
        let empty = BTreeSet::new();
        let wanted = needed.get(&place).unwrap_or(&empty);
        if !wanted.is_empty()
            && let Err(message) = carry(deps, &ctx.members, &ctx.clusters, &place, wanted).await
        {
            tracing::info!(cluster = %place.0, namespace = %place.1, %message, "could not keep what runs need in sync; retrying");
        }
        if *count != counts.get(&place).copied().unwrap_or(0) {
            // A run was given what it needs since the runs were read.
            continue;
        }
        for dep in present.get(&place).unwrap_or(&empty).difference(wanted) {
            if dep.kind.is_template() && template_wanted_there(deps, &ctx.clusters, &place, dep) {
                unchecked.remove(&(place.clone(), dep.clone()));
                continue;
            }
            match remove(deps, &ctx.members, &place, dep).await {
                Ok(()) => {
                    unchecked.remove(&(place.clone(), dep.clone()));
                }
                Err(message) => {
                    tracing::info!(cluster = %place.0, namespace = %place.1, %message, "could not remove what no run needs; retrying")
                }
            }
        }
        drop(count);
    }
}

/// What unfinished runs decided for a cluster need, by place.
fn needed_by_unfinished<K: FederatedRun>(
    store: &Store<K>,
    deps: &Dependencies,
    out: &mut BTreeMap<Place, BTreeSet<Dep>>,
) {
    for run in store.state() {
        let status = run.run_status();
        if status.and_then(|s| s.phase).is_some_and(is_final) {
            continue;
        }
        let clusters = decided_clusters(status);
        if clusters.is_empty() {
            continue;
        }
        let ns = run.namespace().unwrap_or_default();
        let closure = deps.closure(K::KIND, &ns, &run.template().spec);
        for cluster in clusters {
            out.entry((cluster, ns.clone()))
                .or_default()
                .extend(closure.needs.iter().cloned());
        }
    }
}

/// Everything any stored run names, on every cluster it was decided for
/// or moved off.
fn named_by_all<K: FederatedRun>(
    store: &Store<K>,
    deps: &Dependencies,
    out: &mut BTreeSet<(Place, Dep)>,
) {
    for run in store.state() {
        let status = run.run_status();
        let mut clusters = decided_clusters(status);
        clusters.extend(
            status
                .into_iter()
                .flat_map(|s| s.attempts.iter().map(|a| a.cluster.clone())),
        );
        if clusters.is_empty() {
            continue;
        }
        let ns = run.namespace().unwrap_or_default();
        let closure = deps.closure(K::KIND, &ns, &run.template().spec);
        for cluster in clusters {
            for dep in closure.named().filter(|d| !d.kind.is_template()) {
                out.insert(((cluster.clone(), ns.clone()), dep));
            }
        }
    }
}
