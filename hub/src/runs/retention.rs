//! Retention: finished federated runs (and with them, through their
//! finalizer, their assignments and member runs) are deleted once they
//! are older than a TTL, or beyond a number kept per namespace, so the
//! hub's store, and its memory, stay bounded however many runs a fleet
//! finishes. [`expired`] decides (pure, unit-tested); [`sweep`] reads the
//! run stores and deletes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Preconditions};
use kube::runtime::reflector::Store;
use tekfed_api::native::LABEL_NATIVE;
use tekfed_api::tekton::is_final;
use tekfed_api::{FederatedPipelineRun, FederatedTaskRun};

use super::{FederatedRun, RunContext};
use crate::errors::one_line;

/// How long finished runs are kept, and how many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// A finished run is deleted this long after it finished (`None`: kept
    /// until the history limit removes it).
    pub ttl: Option<Duration>,
    /// At most this many finished runs of each kind are kept per namespace,
    /// the newest (`None`: no limit).
    pub keep: Option<usize>,
}

/// One finished run, as retention sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// When it finished (its `completionTime`, else its creation).
    pub at: Timestamp,
}

/// The finished runs to delete now: those finished longer than the TTL
/// ago, and in each namespace and kind the oldest beyond the number kept.
pub fn expired(finished: &[Finished], retention: Retention, now: Timestamp) -> Vec<&Finished> {
    let mut by_group: BTreeMap<(&str, &str), Vec<&Finished>> = BTreeMap::new();
    for run in finished {
        by_group
            .entry((run.kind, run.namespace.as_str()))
            .or_default()
            .push(run);
    }
    let mut out = Vec::new();
    for (_, mut runs) in by_group {
        // Newest first; ties by name so the choice is stable.
        runs.sort_by(|a, b| b.at.cmp(&a.at).then_with(|| a.name.cmp(&b.name)));
        for (i, run) in runs.into_iter().enumerate() {
            let too_old = retention
                .ttl
                .is_some_and(|ttl| now.duration_since(run.at).unsigned_abs() > ttl);
            let too_many = retention.keep.is_some_and(|keep| i >= keep);
            if too_old || too_many {
                out.push(run);
            }
        }
    }
    out
}

/// The finished runs in one store, but for shadows of native runs (those
/// go with the native run they mirror).
fn finished<K: FederatedRun>(store: &Store<K>) -> Vec<Finished> {
    store
        .state()
        .into_iter()
        .filter(|run| !run.labels().contains_key(LABEL_NATIVE))
        .filter(|run| run.meta().deletion_timestamp.is_none())
        .filter_map(|run| {
            let status = run.run_status()?;
            if !status.phase.is_some_and(is_final) {
                return None;
            }
            let at = status
                .completion_time
                .as_ref()
                .or(run.meta().creation_timestamp.as_ref())?
                .0;
            Some(Finished {
                kind: K::FEDERATED_KIND,
                namespace: run.namespace()?,
                name: run.name_any(),
                uid: run.uid()?,
                at,
            })
        })
        .collect()
}

/// Delete what [`expired`] says, every `interval`, until the hub stops.
pub async fn sweep(
    ctx: Arc<RunContext>,
    task_runs: Store<FederatedTaskRun>,
    pipeline_runs: Store<FederatedPipelineRun>,
    retention: Retention,
    interval: Duration,
) {
    if retention.ttl.is_none() && retention.keep.is_none() {
        return std::future::pending().await;
    }
    let _ = task_runs.wait_until_ready().await;
    let _ = pipeline_runs.wait_until_ready().await;
    loop {
        let mut all = finished(&task_runs);
        all.extend(finished(&pipeline_runs));
        for run in expired(&all, retention, Timestamp::now()) {
            let deleted = match run.kind {
                "FederatedTaskRun" => delete::<FederatedTaskRun>(&ctx, run).await,
                _ => delete::<FederatedPipelineRun>(&ctx, run).await,
            };
            match deleted {
                Ok(()) => {
                    tracing::debug!(kind = run.kind, ns = %run.namespace, name = %run.name, "finished run deleted (retention)")
                }
                Err(e) => {
                    tracing::info!(kind = run.kind, ns = %run.namespace, name = %run.name, error = %one_line(&e), "finished run not deleted; tried again later")
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// Delete one run, only the one seen (its uid as precondition).
async fn delete<K: FederatedRun>(ctx: &RunContext, run: &Finished) -> Result<(), kube::Error> {
    let api: Api<K> = Api::namespaced(ctx.hub.clone(), &run.namespace);
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(run.uid.clone()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&run.name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn run(kind: &'static str, ns: &str, name: &str, finished: i64) -> Finished {
        Finished {
            kind,
            namespace: ns.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            at: at(finished),
        }
    }

    fn names(runs: Vec<&Finished>) -> Vec<&str> {
        let mut n: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        n.sort();
        n
    }

    #[test]
    fn runs_finished_longer_than_the_ttl_ago_go() {
        let runs = [
            run("FederatedTaskRun", "ci", "old", 100),
            run("FederatedTaskRun", "ci", "new", 1000),
        ];
        let retention = Retention {
            ttl: Some(Duration::from_secs(600)),
            keep: None,
        };
        assert_eq!(names(expired(&runs, retention, at(1100))), ["old"]);
        assert!(expired(&runs, retention, at(600)).is_empty());
    }

    #[test]
    fn the_newest_are_kept_per_namespace_and_kind() {
        let runs = [
            run("FederatedTaskRun", "ci", "a1", 1),
            run("FederatedTaskRun", "ci", "a2", 2),
            run("FederatedTaskRun", "ci", "a3", 3),
            run("FederatedPipelineRun", "ci", "p1", 1),
            run("FederatedTaskRun", "other", "o1", 1),
        ];
        let retention = Retention {
            ttl: None,
            keep: Some(2),
        };
        assert_eq!(names(expired(&runs, retention, at(10))), ["a1"]);
        let none = Retention {
            ttl: None,
            keep: Some(0),
        };
        assert_eq!(expired(&runs, none, at(10)).len(), 5);
    }

    #[test]
    fn without_a_ttl_or_a_limit_nothing_goes() {
        let runs = [run("FederatedTaskRun", "ci", "a", 1)];
        let keep_all = Retention {
            ttl: None,
            keep: None,
        };
        assert!(expired(&runs, keep_all, at(1_000_000)).is_empty());
    }
}
