//! Taking runs off a cluster that is being drained or was lost. Pure, so
//! every case is a unit test; [`super::dispatch`](mod@super::dispatch) and
//! [`super::reconcile`] read and write.
//!
//! A run leaves a cluster in two steps, each with one writer:
//!
//! 1. The dispatcher *revokes* the run's assignment on that cluster: it
//!    sets the assignment's `status.revoked` (with `revokedReason` and
//!    `revokedTime`) by a status write with the assignment's
//!    resourceVersion as precondition, made only while the assignment is
//!    unreleased (or, for a started run on a lost cluster, whatever its
//!    state). If the agent released the run meanwhile, the write fails, and
//!    the run is left to finish there. Revoking never deletes anything.
//! 2. The run controller sees the revoked assignment and folds it into the
//!    run's status ([`super::status::revoked`]): back to `Queued` with the
//!    move in `attempts`, or `Failed`/`ClusterLost`.
//!
//! The assignment stays, revoked, so a controller acting on an older view
//! never re-creates it, and the agent never releases it: a held copy is
//! deleted, a started one cancelled. The hub deletes it when the federated
//! run is deleted, or when the run, its move folded, is scheduled onto the
//! same cluster again (a new assignment, with the next attempt, replaces
//! it).

use std::collections::BTreeMap;

use tekfed_api::tekton::is_final;
use tekfed_api::{DRAIN_ANNOTATION, MemberCluster, RunAssignmentStatus};

use crate::clusters::health::AGENT_READY;

/// Why runs leave a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leaving {
    /// Cordoned and drained by an operator: runs that started stay.
    Drained,
    /// Its agent stopped reporting: nothing there can be trusted to run.
    ClusterLost,
}

impl Leaving {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Drained => "Drained",
            Self::ClusterLost => "ClusterLost",
        }
    }
}

/// The clusters runs are leaving, and why. A lost cluster wins over a
/// drained one: a drain waits for started runs, loss does not.
pub fn leaving<'a>(
    clusters: impl IntoIterator<Item = &'a MemberCluster>,
) -> BTreeMap<String, Leaving> {
    clusters
        .into_iter()
        .filter_map(|mc| {
            let name = mc.metadata.name.clone()?;
            let lost = mc.status.as_ref().is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == AGENT_READY && c.status == "False" && c.reason == "HeartbeatLost"
                })
            });
            let drained = mc.spec.unschedulable
                && mc
                    .metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key(DRAIN_ANNOTATION));
            if lost {
                Some((name, Leaving::ClusterLost))
            } else if drained {
                Some((name, Leaving::Drained))
            } else {
                None
            }
        })
        .collect()
}

/// What the dispatcher does for one run on a cluster it is leaving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Revoke the assignment (conditionally on the resourceVersion read).
    Revoke,
    /// Leave it: not created yet, started on a drained cluster, finished,
    /// or already revoked.
    Wait,
}

/// The step for one run's assignment on a cluster it is leaving (`None`:
/// the assignment does not exist yet). A started run is revoked only from a lost
/// cluster, where the run controller then fails or reschedules it.
pub fn step(why: Leaving, assignment: Option<Option<&RunAssignmentStatus>>) -> Step {
    let Some(status) = assignment else {
        // The run controller creates it first; revoking needs something to
        // hold the precondition on.
        return Step::Wait;
    };
    let status = status.cloned().unwrap_or_default();
    if status.is_revoked() || status.phase.is_some_and(is_final) {
        return Step::Wait;
    }
    match (why, status.is_released()) {
        (_, false) => Step::Revoke,
        (Leaving::ClusterLost, true) => Step::Revoke,
        (Leaving::Drained, true) => Step::Wait,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
    use k8s_openapi::jiff::Timestamp;
    use tekfed_api::runs::RunPhase;
    use tekfed_api::{MemberClusterSpec, MemberClusterStatus};

    use super::*;

    fn assignment(released: bool, phase: Option<RunPhase>) -> RunAssignmentStatus {
        RunAssignmentStatus {
            released: Some(released),
            phase,
            ..Default::default()
        }
    }

    #[test]
    fn a_held_run_moves_off_a_drained_or_lost_cluster() {
        for why in [Leaving::Drained, Leaving::ClusterLost] {
            assert_eq!(
                step(why, Some(Some(&assignment(false, None)))),
                Step::Revoke
            );
            assert_eq!(step(why, Some(None)), Step::Revoke, "no status yet");
        }
    }

    #[test]
    fn a_started_run_finishes_on_a_drained_cluster_but_not_on_a_lost_one() {
        let running = assignment(true, Some(RunPhase::Running));
        assert_eq!(step(Leaving::Drained, Some(Some(&running))), Step::Wait);
        assert_eq!(
            step(Leaving::ClusterLost, Some(Some(&running))),
            Step::Revoke
        );
    }

    #[test]
    fn finished_revoked_and_uncreated_assignments_are_left_alone() {
        let done = assignment(true, Some(RunPhase::Succeeded));
        let mut revoked = assignment(false, None);
        revoked.revoked = Some(true);
        for why in [Leaving::Drained, Leaving::ClusterLost] {
            assert_eq!(step(why, Some(Some(&done))), Step::Wait);
            assert_eq!(step(why, Some(Some(&revoked))), Step::Wait);
            assert_eq!(step(why, None), Step::Wait);
        }
    }

    fn cluster(name: &str, cordoned: bool, drain: bool, agent: (&str, &str)) -> MemberCluster {
        let mut mc = MemberCluster::new(
            name,
            MemberClusterSpec {
                unschedulable: cordoned,
                ..Default::default()
            },
        );
        if drain {
            mc.metadata.annotations = Some(BTreeMap::from([(
                DRAIN_ANNOTATION.to_owned(),
                "2026-11-25T00:00:00Z".to_owned(),
            )]));
        }
        mc.status = Some(MemberClusterStatus {
            conditions: vec![Condition {
                type_: AGENT_READY.into(),
                status: agent.0.into(),
                reason: agent.1.into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    Timestamp::UNIX_EPOCH,
                ),
            }],
            ..Default::default()
        });
        mc
    }

    #[test]
    fn drained_means_cordoned_with_the_drain_mark_and_lost_means_heartbeat_lost() {
        let fresh = ("True", "HeartbeatFresh");
        let clusters = [
            cluster("cordoned", true, false, fresh),
            cluster("draining", true, true, fresh),
            cluster("uncordoned-mark-left", false, true, fresh),
            cluster("lost", false, false, ("False", "HeartbeatLost")),
            cluster("lost-and-draining", true, true, ("False", "HeartbeatLost")),
            cluster("new", false, false, ("False", "NoHeartbeat")),
        ];
        let got = leaving(&clusters);
        assert_eq!(
            got,
            BTreeMap::from([
                ("draining".to_owned(), Leaving::Drained),
                ("lost".to_owned(), Leaving::ClusterLost),
                ("lost-and-draining".to_owned(), Leaving::ClusterLost),
            ])
        );
    }
}
