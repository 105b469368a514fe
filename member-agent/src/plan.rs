//! What the agent does for one assigned run, decided from what it sees:
//! the run's assignment on the hub and the run on its member.
//!
//! The fencing rule lives here: a run may start on this cluster only after
//! the agent's conditional write marking its assignment released succeeded. A
//! held run whose assignment is gone, or marked revoked, was taken away (moved
//! elsewhere, or its federated run deleted) and is deleted unstarted; a
//! started run whose assignment is revoked (its cluster was lost, and the hub
//! failed or rescheduled it) is cancelled.

use serde_json::Value;
use tekfed_api::RunKind;
use tekfed_api::runs::RunPhase;
use tekfed_api::tekton::{PIPELINE_RUN_PENDING, TektonRun, cancel_values, is_final, phase};

/// The assignment, as the agent last saw it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Assignment {
    pub released: bool,
    /// The hub took the run off this cluster.
    pub revoked: bool,
    pub phase: Option<RunPhase>,
    pub run_status: Option<Value>,
}

/// The member run, as the agent last saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberRun {
    /// `spec.status`.
    pub spec_status: Option<String>,
    /// `status`.
    pub status: Value,
}

impl MemberRun {
    /// The view of a run from the agent's watch.
    pub fn of(run: &TektonRun) -> Self {
        Self {
            spec_status: run.spec.status.clone(),
            status: run.status.clone().unwrap_or_default(),
        }
    }

    pub fn held(&self) -> bool {
        self.spec_status.as_deref() == Some(PIPELINE_RUN_PENDING)
    }
}

/// One step the agent takes.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Mark the assignment released, conditionally on its resourceVersion.
    Release,
    /// Clear the member run's `spec.status` so Tekton starts it.
    Unhold,
    /// Delete the held member run: its assignment was revoked.
    DeleteHeld,
    /// Cancel the started member run: the hub no longer counts on it.
    Cancel,
    /// Write the member run's phase and status into the assignment.
    Report { phase: RunPhase, status: Value },
}

/// The steps for one run, in order.
pub fn plan(kind: RunKind, assignment: Option<&Assignment>, run: Option<&MemberRun>) -> Vec<Step> {
    match (assignment, run) {
        // Revoked while held: it must never start here.
        (None, Some(run)) if run.held() => vec![Step::DeleteHeld],
        (None, _) => vec![],
        (Some(assignment), Some(run)) if assignment.revoked && run.held() => vec![Step::DeleteHeld],
        (Some(assignment), Some(run)) if assignment.revoked => {
            let cancelling = run
                .spec_status
                .as_deref()
                .is_some_and(|s| cancel_values(kind).contains(&s));
            if assignment.released && !cancelling && !is_final(phase(&run.status)) {
                vec![Step::Cancel]
            } else {
                vec![]
            }
        }
        // Never released once revoked.
        (Some(assignment), None) if assignment.revoked => vec![],
        (Some(assignment), run) if !assignment.released => match (kind, run) {
            // A PipelineRun is created held by the hub; release it once it is here.
            (RunKind::PipelineRun, Some(run)) if run.held() => vec![Step::Release, Step::Unhold],
            // Tekton cannot hold a TaskRun: the hub creates it only once released.
            (RunKind::TaskRun, None) => vec![Step::Release],
            _ => vec![],
        },
        (Some(_), Some(run)) if run.held() => vec![Step::Unhold],
        (Some(assignment), Some(run)) => {
            let now = phase(&run.status);
            let changed = assignment.phase != Some(now)
                || assignment.run_status.as_ref() != Some(&run.status);
            if changed && !run.status.is_null() {
                vec![Step::Report {
                    phase: now,
                    status: run.status.clone(),
                }]
            } else {
                vec![]
            }
        }
        (Some(_), None) => vec![],
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn held() -> MemberRun {
        MemberRun {
            spec_status: Some(PIPELINE_RUN_PENDING.into()),
            status: json!({}),
        }
    }

    fn running() -> MemberRun {
        MemberRun {
            spec_status: None,
            status: json!({"conditions": [{"type": "Succeeded", "status": "Unknown", "reason": "Running"}]}),
        }
    }

    fn released() -> Assignment {
        Assignment {
            released: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_held_pipeline_run_is_released_then_started() {
        assert_eq!(
            plan(
                RunKind::PipelineRun,
                Some(&Assignment::default()),
                Some(&held())
            ),
            vec![Step::Release, Step::Unhold]
        );
        // After a crash between the two steps, the unhold is redone.
        assert_eq!(
            plan(RunKind::PipelineRun, Some(&released()), Some(&held())),
            vec![Step::Unhold]
        );
    }

    #[test]
    fn a_task_run_is_released_before_it_exists() {
        assert_eq!(
            plan(RunKind::TaskRun, Some(&Assignment::default()), None),
            vec![Step::Release]
        );
        assert_eq!(plan(RunKind::TaskRun, Some(&released()), None), vec![]);
    }

    #[test]
    fn nothing_is_released_before_the_held_run_arrives() {
        assert_eq!(
            plan(RunKind::PipelineRun, Some(&Assignment::default()), None),
            vec![]
        );
    }

    #[test]
    fn a_revoked_held_run_is_deleted_but_a_started_one_is_left() {
        assert_eq!(
            plan(RunKind::PipelineRun, None, Some(&held())),
            vec![Step::DeleteHeld]
        );
        assert_eq!(plan(RunKind::PipelineRun, None, Some(&running())), vec![]);
    }

    #[test]
    fn a_revoked_assignment_is_never_released_its_held_copy_is_deleted_and_a_started_one_cancelled()
    {
        let revoked = Assignment {
            revoked: true,
            ..Default::default()
        };
        for kind in [RunKind::TaskRun, RunKind::PipelineRun] {
            assert_eq!(plan(kind, Some(&revoked), None), vec![]);
        }
        assert_eq!(
            plan(RunKind::PipelineRun, Some(&revoked), Some(&held())),
            vec![Step::DeleteHeld]
        );
        let lost = Assignment {
            released: true,
            revoked: true,
            ..Default::default()
        };
        assert_eq!(
            plan(RunKind::PipelineRun, Some(&lost), Some(&running())),
            vec![Step::Cancel]
        );
        let cancelling = MemberRun {
            spec_status: Some("TaskRunCancelled".into()),
            ..running()
        };
        assert_eq!(
            plan(RunKind::TaskRun, Some(&lost), Some(&cancelling)),
            vec![]
        );
        let done = MemberRun {
            spec_status: None,
            status: json!({"conditions": [{"type": "Succeeded", "status": "True", "reason": "Succeeded"}]}),
        };
        assert_eq!(plan(RunKind::TaskRun, Some(&lost), Some(&done)), vec![]);
    }

    #[test]
    fn status_is_reported_only_when_it_changed() {
        let steps = plan(RunKind::TaskRun, Some(&released()), Some(&running()));
        assert_eq!(
            steps,
            vec![Step::Report {
                phase: RunPhase::Running,
                status: running().status
            }]
        );
        let reported = Assignment {
            released: true,
            revoked: false,
            phase: Some(RunPhase::Running),
            run_status: Some(running().status),
        };
        assert_eq!(
            plan(RunKind::TaskRun, Some(&reported), Some(&running())),
            vec![]
        );
    }

    /// The hub's store, reduced to what fencing needs: one assignment with a
    /// resourceVersion, written only by compare-and-set, as the API server
    /// does with a resourceVersion precondition. Like the hub, a revoke
    /// marks the assignment (it stays until the federated run is deleted).
    #[derive(Debug)]
    struct HubStore {
        version: u64,
        assignment: Assignment,
    }

    impl HubStore {
        fn new() -> Self {
            HubStore {
                version: 1,
                assignment: Assignment::default(),
            }
        }
        fn read(&self) -> (u64, Assignment) {
            (self.version, self.assignment.clone())
        }
        /// The agent's release: conditional on the version it read.
        fn release(&mut self, seen: u64) -> bool {
            if seen != self.version {
                return false;
            }
            self.assignment.released = true;
            self.version += 1;
            true
        }
        /// The hub's revoke (`hub::moves::step` revokes only an unreleased
        /// assignment off a drained cluster): conditional on the version it read.
        fn revoke(&mut self, seen: u64, assignment_seen: &Assignment) -> bool {
            if seen != self.version || assignment_seen.released || assignment_seen.revoked {
                return false;
            }
            self.assignment.revoked = true;
            self.version += 1;
            true
        }
    }

    #[test]
    fn release_then_revoke_the_run_stays_and_starts_once() {
        let mut store = HubStore::new();
        let (agent_saw, assignment) = store.read();
        let (hub_saw, hub_assignment) = store.read();
        assert_eq!(
            plan(RunKind::PipelineRun, Some(&assignment), Some(&held())),
            vec![Step::Release, Step::Unhold]
        );
        assert!(
            store.release(agent_saw),
            "the agent's release goes first and wins"
        );
        assert!(
            !store.revoke(hub_saw, &hub_assignment),
            "the hub's revoke, on what it read before, fails"
        );
        // Read again, the hub sees it released and leaves it (a drain waits).
        let (now, again) = store.read();
        assert!(!store.revoke(now, &again));
        assert!(store.assignment.released && !store.assignment.revoked);
    }

    #[test]
    fn revoke_then_release_the_held_copy_never_starts() {
        let mut store = HubStore::new();
        let (agent_saw, _) = store.read();
        let (hub_saw, hub_assignment) = store.read();
        assert!(
            store.revoke(hub_saw, &hub_assignment),
            "the hub revokes first"
        );
        assert!(
            !store.release(agent_saw),
            "the agent's release, on what it read before, fails"
        );
        // What the agent then sees: a revoked assignment, a held run: delete it
        // unstarted, and never release it.
        let (_, assignment) = store.read();
        assert_eq!(
            plan(RunKind::PipelineRun, Some(&assignment), Some(&held())),
            vec![Step::DeleteHeld]
        );
        assert_eq!(plan(RunKind::TaskRun, Some(&assignment), None), vec![]);
        assert!(!store.assignment.released);
    }

    #[test]
    fn a_read_alone_is_not_enough_to_release() {
        // The agent reads; the hub revokes meanwhile. A release that only
        // checked what it read would start the run; the conditional write
        // fails instead.
        let mut store = HubStore::new();
        let (agent_saw, assignment) = store.read();
        assert!(
            !assignment.revoked,
            "what the agent read says it may release"
        );
        let (hub_saw, hub_assignment) = store.read();
        assert!(store.revoke(hub_saw, &hub_assignment));
        assert!(!store.release(agent_saw));
        assert!(!store.assignment.released);
    }
}
