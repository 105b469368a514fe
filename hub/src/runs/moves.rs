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
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use tekfed_api::tekton::is_final;
use tekfed_api::{DRAIN_ANNOTATION, MemberCluster, RunAssignmentStatus};

use crate::clusters::health::{AGENT_READY, HEARTBEAT_LOST, REACHABLE};

/// Why runs leave a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leaving {
    /// Cordoned and drained by an operator: runs that started stay.
    Drained,
    /// Its agent stopped reporting. Runs that had not started leave at
    /// once; started ones (`started_too`) only once it has been silent for
    /// the started-run grace too, so an agent that restarts does not fail
    /// the builds running there.
    ClusterLost { started_too: bool },
    /// The hub has not reached the member's API server for longer than the
    /// grace, while its agent still reports: runs that had not started
    /// leave (the hub cannot create them there); started ones are reported
    /// by the agent and finish there.
    Unreachable,
    /// Its `MemberCluster` is being deleted: every run leaves, started ones
    /// as their `onClusterLost` says, before its finalizer lets it go.
    Removed,
}

impl Leaving {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Drained => "Drained",
            Self::ClusterLost { .. } => "ClusterLost",
            Self::Unreachable => "ClusterUnreachable",
            Self::Removed => "ClusterRemoved",
        }
    }
}

/// How long the hub waits before it moves runs off a silent cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Graces {
    /// Unreachable for this long: runs that had not started move.
    pub unreachable: Duration,
    /// Lost for this long: started runs follow `onClusterLost` too.
    pub started: Duration,
}

/// The clusters runs are leaving, and why, at `now`. A lost cluster wins
/// over a drained one: a drain waits for started runs, loss does not. A
/// cluster silent in a disruption (most members at once) is not lost.
pub fn leaving<'a>(
    clusters: impl IntoIterator<Item = &'a MemberCluster>,
    graces: Graces,
    now: Timestamp,
) -> BTreeMap<String, Leaving> {
    clusters
        .into_iter()
        .filter_map(|mc| {
            let name = mc.metadata.name.clone()?;
            // How long a condition has held, when it holds.
            let held_for = |type_: &str, reason: Option<&str>| {
                let c = mc
                    .status
                    .as_ref()?
                    .conditions
                    .iter()
                    .find(|c| c.type_ == type_ && c.status == "False")?;
                if reason.is_some_and(|r| r != c.reason) {
                    return None;
                }
                Some(now.duration_since(c.last_transition_time.0).unsigned_abs())
            };
            let lost = held_for(AGENT_READY, Some(HEARTBEAT_LOST));
            let unreachable = held_for(REACHABLE, None);
            let drained = mc.spec.unschedulable
                && mc
                    .metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key(DRAIN_ANNOTATION));
            if mc.metadata.deletion_timestamp.is_some() {
                Some((name, Leaving::Removed))
            } else if let Some(lost) = lost {
                Some((
                    name,
                    Leaving::ClusterLost {
                        started_too: lost >= graces.started,
                    },
                ))
            } else if drained {
                Some((name, Leaving::Drained))
            } else if unreachable.is_some_and(|d| d >= graces.unreachable) {
                Some((name, Leaving::Unreachable))
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
/// the assignment does not exist yet). A started run is revoked only from a
/// cluster lost for the started-run grace, where the run controller then
/// fails or reschedules it.
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
        (Leaving::ClusterLost { started_too: true } | Leaving::Removed, true) => Step::Revoke,
        (_, true) => Step::Wait,
    }
}

/// [`step`] for a copy of a `mode: All` run, which cannot move: every
/// selected cluster runs its own. An unstarted copy waits for its cluster
/// (held, it starts when the agent is back); a started one is revoked
/// where a `mode: One` run would be, and then fails or runs again there
/// ([`super::status`]); on a removed cluster every copy is revoked.
pub fn step_all(why: Leaving, assignment: Option<Option<&RunAssignmentStatus>>) -> Step {
    let started = assignment
        .flatten()
        .is_some_and(RunAssignmentStatus::is_released);
    match why {
        Leaving::Removed => step(why, assignment),
        Leaving::ClusterLost { started_too: true } if started => step(why, assignment),
        _ => Step::Wait,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use tekfed_api::runs::RunPhase;
    use tekfed_api::{MemberClusterSpec, MemberClusterStatus};

    use super::*;
    use crate::clusters::health::DISRUPTION;

    const LOST_NOW: Leaving = Leaving::ClusterLost { started_too: false };
    const LOST_LONG: Leaving = Leaving::ClusterLost { started_too: true };
    const ALL: [Leaving; 5] = [
        Leaving::Drained,
        LOST_NOW,
        LOST_LONG,
        Leaving::Unreachable,
        Leaving::Removed,
    ];

    fn assignment(released: bool, phase: Option<RunPhase>) -> RunAssignmentStatus {
        RunAssignmentStatus {
            released: Some(released),
            phase,
            ..Default::default()
        }
    }

    #[test]
    fn a_held_run_moves_off_a_cluster_it_leaves_whatever_the_reason() {
        for why in ALL {
            assert_eq!(
                step(why, Some(Some(&assignment(false, None)))),
                Step::Revoke
            );
            assert_eq!(step(why, Some(None)), Step::Revoke, "no status yet");
        }
    }

    #[test]
    fn a_started_run_moves_only_off_a_cluster_lost_for_the_started_run_grace() {
        let running = assignment(true, Some(RunPhase::Running));
        assert_eq!(step(Leaving::Drained, Some(Some(&running))), Step::Wait);
        assert_eq!(step(Leaving::Unreachable, Some(Some(&running))), Step::Wait);
        assert_eq!(step(LOST_NOW, Some(Some(&running))), Step::Wait);
        assert_eq!(step(LOST_LONG, Some(Some(&running))), Step::Revoke);
        assert_eq!(step(Leaving::Removed, Some(Some(&running))), Step::Revoke);
    }

    #[test]
    fn a_copy_of_a_mode_all_run_leaves_only_a_removed_cluster_or_a_lost_one_it_started_on() {
        let held = assignment(false, None);
        let running = assignment(true, Some(RunPhase::Running));
        for why in [Leaving::Drained, LOST_NOW, LOST_LONG, Leaving::Unreachable] {
            assert_eq!(step_all(why, Some(Some(&held))), Step::Wait, "{why:?}");
        }
        assert_eq!(step_all(LOST_NOW, Some(Some(&running))), Step::Wait);
        assert_eq!(step_all(LOST_LONG, Some(Some(&running))), Step::Revoke);
        assert_eq!(step_all(Leaving::Removed, Some(Some(&held))), Step::Revoke);
        assert_eq!(
            step_all(Leaving::Removed, Some(Some(&running))),
            Step::Revoke
        );
    }

    #[test]
    fn finished_revoked_and_uncreated_assignments_are_left_alone() {
        let done = assignment(true, Some(RunPhase::Succeeded));
        let mut revoked = assignment(false, None);
        revoked.revoked = Some(true);
        for why in ALL {
            assert_eq!(step(why, Some(Some(&done))), Step::Wait);
            assert_eq!(step(why, Some(Some(&revoked))), Step::Wait);
            assert_eq!(step(why, None), Step::Wait);
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn condition(type_: &str, status: &str, reason: &str, since: i64) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(at(since)),
        }
    }

    /// A cluster whose agent has been in `agent` (status, reason) since
    /// second 1000, and its API server unreachable since `unreachable`.
    fn cluster(
        name: &str,
        cordoned: bool,
        drain: bool,
        agent: (&str, &str),
        unreachable: Option<i64>,
    ) -> MemberCluster {
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
        let mut conditions = vec![condition(AGENT_READY, agent.0, agent.1, 1000)];
        conditions.push(match unreachable {
            Some(since) => condition(REACHABLE, "False", "Unreachable", since),
            None => condition(REACHABLE, "True", "Connected", 0),
        });
        mc.status = Some(MemberClusterStatus {
            conditions,
            ..Default::default()
        });
        mc
    }

    const GRACES: Graces = Graces {
        unreachable: Duration::from_secs(30),
        started: Duration::from_secs(300),
    };

    #[test]
    fn drained_lost_and_unreachable_clusters_are_told_apart() {
        let fresh = ("True", "HeartbeatFresh");
        let lost = ("False", HEARTBEAT_LOST);
        let clusters = [
            cluster("cordoned", true, false, fresh, None),
            cluster("draining", true, true, fresh, None),
            cluster("uncordoned-mark-left", false, true, fresh, None),
            cluster("lost", false, false, lost, None),
            cluster("lost-and-draining", true, true, lost, None),
            cluster("new", false, false, ("False", "NoHeartbeat"), None),
            // Silent with most members: the hub suspects itself.
            cluster("disrupted", false, false, ("False", DISRUPTION), None),
            cluster("unreachable-long", false, false, fresh, Some(1000)),
            cluster("unreachable-briefly", false, false, fresh, Some(1020)),
        ];
        // 40 s after the agents' conditions changed.
        let got = leaving(&clusters, GRACES, at(1040));
        assert_eq!(
            got,
            BTreeMap::from([
                ("draining".to_owned(), Leaving::Drained),
                ("lost".to_owned(), LOST_NOW),
                ("lost-and-draining".to_owned(), LOST_NOW),
                ("unreachable-long".to_owned(), Leaving::Unreachable),
            ])
        );
        // Past the started-run grace, started runs leave lost clusters too.
        let later = leaving(&clusters, GRACES, at(1300));
        assert_eq!(later["lost"], LOST_LONG);
        assert_eq!(later["lost-and-draining"], LOST_LONG);
        assert!(!later.contains_key("disrupted"));

        // A MemberCluster being deleted: every run leaves, whatever else.
        let mut removed = cluster("removed", true, true, lost, Some(1000));
        removed.metadata.deletion_timestamp = Some(Time(at(1030)));
        assert_eq!(
            leaving([&removed], GRACES, at(1040)),
            BTreeMap::from([("removed".to_owned(), Leaving::Removed)])
        );
    }
}
