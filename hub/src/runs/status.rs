//! Folding what agents report of member runs into a federated run's
//! status: phase, the `Succeeded` condition mirrored from Tekton, times,
//! and the member run's own status. Pure, so every case is a unit test.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::Value;
use tekfed_api::runs::{OnClusterLost, RunAttempt, RunClusterStatus, RunPhase, RunStatus};
use tekfed_api::tekton::{is_final, succeeded_condition};
use tekfed_api::{PlacementMode, RunAssignmentStatus};

/// Whether writing `next` over `previous` changes what the API server
/// stores. Times are stored to the second: a status that differs only below
/// that (Tekton's times carry milliseconds) is the same status, and a write
/// of it would be a request that changes nothing.
pub fn changed(previous: &RunStatus, next: &RunStatus) -> bool {
    previous != next && serde_json::to_value(previous).ok() != serde_json::to_value(next).ok()
}

/// The condition types on federated runs.
pub const SCHEDULED: &str = "Scheduled";
pub const SUCCEEDED: &str = "Succeeded";

fn time(v: &Value) -> Option<Time> {
    serde_json::from_value(v.clone()).ok()
}

fn set_condition(conditions: &mut Vec<Condition>, new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old)
            if old.status == new.status
                && old.reason == new.reason
                && old.message == new.message => {}
        Some(old) => {
            let keep_time = old.status == new.status;
            let last = old.last_transition_time.clone();
            *old = new;
            if keep_time {
                old.last_transition_time = last;
            }
        }
        None => conditions.push(new),
    }
}

/// The `Succeeded` condition as Tekton wrote it on the member run.
fn mirrored(run_status: &Value, now: &Time) -> Option<Condition> {
    let c = succeeded_condition(run_status)?;
    Some(Condition {
        type_: SUCCEEDED.into(),
        status: c["status"].as_str().unwrap_or("Unknown").into(),
        reason: c["reason"].as_str().unwrap_or_default().into(),
        message: c["message"].as_str().unwrap_or_default().into(),
        observed_generation: None,
        last_transition_time: time(&c["lastTransitionTime"]).unwrap_or_else(|| now.clone()),
    })
}

/// A `mode: All` copy whose assignment the hub revoked (its cluster lost
/// after the copy started, or removed): it cannot move, since every
/// selected cluster runs its own copy. It ends `Failed` with the
/// revocation's reason, unless the run asks to be rescheduled
/// (`onClusterLost: Reschedule`), when it waits to run again on that
/// cluster once it is back; a removed cluster never comes back. `None` for
/// a copy not revoked, or one that ended first.
fn lost_copy(
    cluster: &str,
    assignment: &RunAssignmentStatus,
    on_lost: OnClusterLost,
) -> Option<RunClusterStatus> {
    if !assignment.is_revoked() || assignment.phase.is_some_and(is_final) {
        return None;
    }
    let reason = assignment
        .revoked_reason
        .clone()
        .unwrap_or_else(|| "Revoked".into());
    let removed = reason == "ClusterRemoved";
    let (phase, message, completion_time) = if on_lost == OnClusterLost::Reschedule && !removed {
        (
            RunPhase::Queued,
            format!(
                "cluster {cluster} was lost with this copy on it; it runs again there once the cluster is back (spec.onClusterLost: Reschedule)"
            ),
            None,
        )
    } else {
        (
            RunPhase::Failed,
            format!(
                "cluster {cluster} was {} with this copy on it, so tekfed cannot tell how it ends",
                if removed {
                    "removed from the federation"
                } else {
                    "lost"
                }
            ),
            assignment.revoked_time.clone(),
        )
    };
    Some(RunClusterStatus {
        cluster: cluster.to_owned(),
        phase,
        reason: Some(reason),
        message: Some(message),
        start_time: assignment
            .run_status
            .as_ref()
            .and_then(|s| time(&s["startTime"])),
        completion_time,
    })
}

/// The phase of one cluster's copy from its assignment.
fn phase_of(assignment: Option<&RunAssignmentStatus>) -> RunPhase {
    assignment
        .and_then(|r| r.phase)
        .unwrap_or(RunPhase::Scheduled)
}

/// The overall phase of several copies (`mode: All`).
fn overall(phases: &[RunPhase]) -> RunPhase {
    if phases.is_empty() {
        return RunPhase::Scheduled;
    }
    if phases.iter().all(|p| is_final(*p)) {
        if phases.contains(&RunPhase::Failed) {
            RunPhase::Failed
        } else if phases.contains(&RunPhase::Cancelled) {
            RunPhase::Cancelled
        } else {
            RunPhase::Succeeded
        }
    } else if phases.iter().any(|p| *p != RunPhase::Scheduled) {
        RunPhase::Running
    } else {
        RunPhase::Scheduled
    }
}

/// The new status of a scheduled run, from the assignments of its clusters
/// (`assignments`, one per cluster in `previous`'s decision, in that order).
pub fn fold(
    mode: PlacementMode,
    on_lost: OnClusterLost,
    previous: &RunStatus,
    assignments: &[(String, Option<RunAssignmentStatus>)],
    now: Time,
) -> RunStatus {
    let mut status = previous.clone();
    match mode {
        PlacementMode::One => {
            let assignment = assignments.first().and_then(|(_, r)| r.as_ref());
            let phase = phase_of(assignment);
            status.phase = Some(phase);
            if let Some(run_status) = assignment.and_then(|r| r.run_status.as_ref()) {
                if let Some(c) = mirrored(run_status, &now) {
                    set_condition(&mut status.conditions, c);
                }
                status.start_time = time(&run_status["startTime"]).or(status.start_time);
                status.completion_time =
                    time(&run_status["completionTime"]).or(status.completion_time);
                status.member_status = Some(run_status.clone());
            }
        }
        PlacementMode::All => {
            let mut phases = Vec::new();
            status.clusters = assignments
                .iter()
                .map(|(cluster, assignment)| {
                    let assignment = assignment.as_ref();
                    if let Some(copy) = assignment.and_then(|a| lost_copy(cluster, a, on_lost)) {
                        phases.push(copy.phase);
                        return copy;
                    }
                    let phase = phase_of(assignment);
                    phases.push(phase);
                    let run_status = assignment.and_then(|r| r.run_status.as_ref());
                    let condition = run_status.and_then(|s| mirrored(s, &now));
                    RunClusterStatus {
                        cluster: cluster.clone(),
                        phase,
                        reason: condition.as_ref().map(|c| c.reason.clone()),
                        message: condition.as_ref().map(|c| c.message.clone()),
                        start_time: run_status.and_then(|s| time(&s["startTime"])),
                        completion_time: run_status.and_then(|s| time(&s["completionTime"])),
                    }
                })
                .collect();
            let phase = overall(&phases);
            status.phase = Some(phase);
            status.start_time = status
                .clusters
                .iter()
                .filter_map(|c| c.start_time.clone())
                .min();
            if is_final(phase) {
                status.completion_time = status
                    .clusters
                    .iter()
                    .filter_map(|c| c.completion_time.clone())
                    .max();
            }
            let (state, reason) = match phase {
                RunPhase::Succeeded => ("True", "Succeeded"),
                RunPhase::Failed => ("False", "Failed"),
                RunPhase::Cancelled => ("False", "Cancelled"),
                RunPhase::Running => ("Unknown", "Running"),
                _ => ("Unknown", "Pending"),
            };
            let done = phases.iter().filter(|p| is_final(**p)).count();
            set_condition(
                &mut status.conditions,
                Condition {
                    type_: SUCCEEDED.into(),
                    status: state.into(),
                    reason: reason.into(),
                    message: format!("{done} of {} clusters finished", phases.len()),
                    observed_generation: None,
                    last_transition_time: now,
                },
            );
        }
    }
    status
}

/// The condition saying a run waits for something it refers to.
pub const DEPENDENCIES_READY: &str = "DependenciesReady";

/// `DependenciesReady=False`: what the run needs that is not on the hub
/// (`DependencyMissing`) or may not leave it (`SecretNotCarried`).
pub fn dependencies_not_ready(reason: &str, message: &str, now: Time) -> Condition {
    Condition {
        type_: DEPENDENCIES_READY.into(),
        status: "False".into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: None,
        last_transition_time: now,
    }
}

/// `DependenciesReady=True`: what it needs is on the hub, and is carried
/// to its cluster before it runs.
pub fn dependencies_ready(message: &str, now: Time) -> Condition {
    Condition {
        type_: DEPENDENCIES_READY.into(),
        status: "True".into(),
        reason: tekfed_api::dependencies::REASON_RESOLVED.into(),
        message: message.into(),
        observed_generation: None,
        last_transition_time: now,
    }
}

/// The condition saying the run's member copy cannot be made yet.
pub const MEMBER_RUN_READY: &str = "MemberRunReady";

/// `MemberRunReady=False`: what keeps the hub from creating (or cancelling)
/// the member run, e.g. `Conflict` when a run tekfed did not create holds
/// its name. The hub retries; the condition turns True once it is done.
pub fn member_run_blocked(reason: &str, message: &str, now: Time) -> Condition {
    Condition {
        type_: MEMBER_RUN_READY.into(),
        status: "False".into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: None,
        last_transition_time: now,
    }
}

/// Put a False condition into `status` unless the same one is there: true
/// when the status changed (and must be written).
pub fn set_blocked(status: &mut RunStatus, condition: Condition) -> bool {
    if status.conditions.iter().any(|c| {
        c.type_ == condition.type_ && c.reason == condition.reason && c.message == condition.message
    }) {
        return false;
    }
    status.conditions.retain(|c| c.type_ != condition.type_);
    status.conditions.push(condition);
    true
}

/// Turn the False conditions of these types True: the wait is over.
pub fn resolve(status: &mut RunStatus, types: &[(&str, &str, &str)], now: &Time) {
    for (type_, reason, message) in types {
        for c in status
            .conditions
            .iter_mut()
            .filter(|c| c.type_ == *type_ && c.status == "False")
        {
            c.status = "True".into();
            c.reason = (*reason).into();
            c.message = (*message).into();
            c.last_transition_time = now.clone();
        }
    }
}

/// The status recording a scheduling decision, written before anything is
/// created on a member.
pub fn scheduled(
    previous: Option<&RunStatus>,
    mode: PlacementMode,
    clusters: &[String],
    candidates: &str,
    generation: Option<i64>,
    now: Time,
) -> RunStatus {
    let mut status = previous.cloned().unwrap_or_default();
    status.phase = Some(RunPhase::Scheduled);
    status.observed_generation = generation;
    status.scheduled_time = Some(now.clone());
    match mode {
        PlacementMode::One => status.cluster = clusters.first().cloned(),
        PlacementMode::All => {
            status.clusters = clusters
                .iter()
                .map(|c| RunClusterStatus {
                    cluster: c.clone(),
                    phase: RunPhase::Scheduled,
                    reason: None,
                    message: None,
                    start_time: None,
                    completion_time: None,
                })
                .collect()
        }
    }
    set_condition(
        &mut status.conditions,
        Condition {
            type_: SCHEDULED.into(),
            status: "True".into(),
            reason: "Scheduled".into(),
            message: scheduled_message(mode, clusters, candidates),
            observed_generation: generation,
            last_transition_time: now,
        },
    );
    status
}

/// The `Scheduled=True` message: where, and the candidates it was
/// chosen from with their loads.
fn scheduled_message(mode: PlacementMode, clusters: &[String], candidates: &str) -> String {
    let how = match mode {
        PlacementMode::One => "the least loaded",
        PlacementMode::All => "every selected cluster (mode All)",
    };
    let mut message = format!("scheduled to {} as {how}", clusters.join(", "));
    if !candidates.is_empty() {
        message.push_str("; candidates: ");
        message.push_str(candidates);
    }
    message
}

/// The status of a run waiting for room, with why.
pub fn queued(
    previous: Option<&RunStatus>,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Time,
) -> RunStatus {
    let mut status = previous.cloned().unwrap_or_default();
    status.phase = Some(RunPhase::Queued);
    status.observed_generation = generation;
    set_condition(
        &mut status.conditions,
        Condition {
            type_: SCHEDULED.into(),
            status: "False".into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: generation,
            last_transition_time: now,
        },
    );
    status
}

/// The status of a run the hub refuses before scheduling it, because it
/// cannot work anywhere (such as [`super::member_run::TEMPLATE_TOO_LARGE`]):
/// `Failed` at once, `Scheduled=False` and `Succeeded=False` with the
/// reason and what to change. It holds no cluster and nothing is made.
pub fn refused(previous: Option<&RunStatus>, reason: &str, message: &str, now: Time) -> RunStatus {
    let mut status = previous.cloned().unwrap_or_default();
    status.phase = Some(RunPhase::Failed);
    status.completion_time = Some(now.clone());
    for type_ in [SCHEDULED, SUCCEEDED] {
        set_condition(
            &mut status.conditions,
            Condition {
                type_: type_.into(),
                status: "False".into(),
                reason: reason.into(),
                message: message.into(),
                observed_generation: None,
                last_transition_time: now.clone(),
            },
        );
    }
    status
}

/// The status of a run cancelled (`spec.template.spec.status`) before it
/// was scheduled: `Cancelled` at once, having run nowhere and holding
/// nothing (it does not wait for a slot to be cancelled in).
pub fn cancelled_in_queue(previous: Option<&RunStatus>, now: Time) -> RunStatus {
    let mut status = refused(
        previous,
        CANCELLED_IN_QUEUE,
        "cancelled (spec.template.spec.status) before it was scheduled: it ran on no cluster",
        now,
    );
    status.phase = Some(RunPhase::Cancelled);
    status
}

/// The reason of a run cancelled while it waited for a cluster.
pub const CANCELLED_IN_QUEUE: &str = "CancelledInQueue";

/// The status of a run that waits, before scheduling, for what it needs
/// from the hub: `Queued`, `Scheduled=False` (`WaitingForDependencies`)
/// and `DependenciesReady=False` saying what and why. It holds no cluster.
pub fn waiting_for_dependencies(
    previous: Option<&RunStatus>,
    reason: &str,
    message: &str,
    now: Time,
) -> RunStatus {
    let mut status = queued(
        previous,
        "WaitingForDependencies",
        "not scheduled until what it needs is on the hub (see DependenciesReady)",
        None,
        now.clone(),
    );
    set_condition(
        &mut status.conditions,
        dependencies_not_ready(reason, message, now),
    );
    status
}

/// The reason a run ends with when its member refused to create it.
pub const MEMBER_REJECTED: &str = "MemberRejected";

/// What a member's refusal to create the run reads as, in the shape of the
/// run status an agent reports: ended, `Succeeded=False`,
/// [`MEMBER_REJECTED`], with the member's words.
pub fn rejected(message: &str, now: &Time) -> Value {
    serde_json::json!({
        "conditions": [{
            "type": SUCCEEDED,
            "status": "False",
            "reason": MEMBER_REJECTED,
            "message": message,
            "lastTransitionTime": now,
        }],
        "completionTime": now,
    })
}

/// Record that what the run needs is on the hub (set when it is scheduled).
pub fn set_dependencies_ready(status: &mut RunStatus, message: &str, now: Time) {
    set_condition(&mut status.conditions, dependencies_ready(message, now));
}

/// The status of a `mode: One` run whose assignment on `cluster` (made for
/// placement number `attempt`) the hub revoked (see [`super::moves`]): back
/// in the queue with the move in `attempts`, or, for a run that had started
/// on a lost cluster and does not ask to be rescheduled, `Failed` with
/// reason `ClusterLost`.
pub fn revoked(
    previous: &RunStatus,
    cluster: &str,
    attempt: i32,
    assignment: &RunAssignmentStatus,
    on_lost: OnClusterLost,
    now: Time,
) -> RunStatus {
    let mut status = previous.clone();
    let reason = assignment
        .revoked_reason
        .clone()
        .unwrap_or_else(|| "Revoked".into());
    let started = assignment.is_released();
    if started && on_lost == OnClusterLost::Fail {
        status.phase = Some(RunPhase::Failed);
        status.completion_time = Some(now.clone());
        set_condition(
            &mut status.conditions,
            Condition {
                type_: SUCCEEDED.into(),
                status: "False".into(),
                reason: reason.clone(),
                message: format!(
                    "{}, so tekfed cannot tell how it ends; it is not run again elsewhere \
                     unless spec.onClusterLost is Reschedule",
                    match reason.as_str() {
                        "ClusterRemoved" => format!(
                            "cluster {cluster} was removed from the federation after the run started there"
                        ),
                        _ => format!(
                            "cluster {cluster} stopped reporting after the run started there"
                        ),
                    }
                ),
                observed_generation: None,
                last_transition_time: now,
            },
        );
        return status;
    }
    // Placement `attempt` ends here; recorded once however often it is folded.
    if status.attempts.len() < attempt.max(1) as usize {
        status.attempts.push(RunAttempt {
            cluster: cluster.to_owned(),
            reason: reason.clone(),
            time: now.clone(),
        });
    }
    status.phase = Some(RunPhase::Queued);
    status.cluster = None;
    status.scheduled_time = None;
    status.start_time = None;
    status.member_status = None;
    status.conditions.retain(|c| c.type_ != SUCCEEDED);
    let what = if started {
        "started there, and is run again elsewhere (spec.onClusterLost: Reschedule)"
    } else {
        "had not started there"
    };
    set_condition(
        &mut status.conditions,
        Condition {
            type_: SCHEDULED.into(),
            status: "False".into(),
            reason: "Moved".into(),
            message: format!(
                "moved off {cluster} ({reason}): it {what}; waiting for another cluster"
            ),
            observed_generation: None,
            last_transition_time: now,
        },
    );
    status
}

/// The clusters a run was scheduled to, if it was.
pub fn decided_clusters(status: Option<&RunStatus>) -> Vec<String> {
    let Some(status) = status else { return vec![] };
    match &status.cluster {
        Some(c) => vec![c.clone()],
        None => status.clusters.iter().map(|c| c.cluster.clone()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    use super::*;

    fn at(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    fn assignment(phase: RunPhase, state: &str, reason: &str) -> RunAssignmentStatus {
        RunAssignmentStatus {
            released: Some(true),
            phase: Some(phase),
            run_status: Some(json!({
                "conditions": [{"type": "Succeeded", "status": state, "reason": reason, "message": "m", "lastTransitionTime": "2026-11-25T10:00:00Z"}],
                "startTime": "2026-11-25T09:59:00Z",
                "completionTime": if state == "Unknown" { Value::Null } else { json!("2026-11-25T10:00:00Z") },
            })),
            ..Default::default()
        }
    }

    #[test]
    fn a_decision_is_recorded_before_anything_runs() {
        let s = scheduled(
            None,
            PlacementMode::One,
            &["member-2".into()],
            "",
            Some(1),
            at(5),
        );
        assert_eq!(s.phase, Some(RunPhase::Scheduled));
        assert_eq!(s.cluster.as_deref(), Some("member-2"));
        assert_eq!(decided_clusters(Some(&s)), vec!["member-2".to_string()]);
        assert_eq!(s.conditions[0].status, "True");
        let with_loads = scheduled(
            None,
            PlacementMode::One,
            &["member-2".into()],
            "member-2 (1 of 10 runs, chosen), member-1 (4 of 10 runs)",
            None,
            at(5),
        );
        assert_eq!(
            with_loads.conditions[0].message,
            "scheduled to member-2 as the least loaded; candidates: member-2 (1 of 10 runs, chosen), member-1 (4 of 10 runs)"
        );
        assert_eq!(
            decided_clusters(Some(&queued(None, "AllClustersFull", "full", None, at(1)))),
            Vec::<String>::new()
        );
    }

    #[test]
    fn one_cluster_mirrors_tekton() {
        let base = scheduled(None, PlacementMode::One, &["m".into()], "", Some(1), at(5));
        let running = fold(
            PlacementMode::One,
            OnClusterLost::Fail,
            &base,
            &[(
                "m".into(),
                Some(assignment(RunPhase::Running, "Unknown", "Running")),
            )],
            at(6),
        );
        assert_eq!(running.phase, Some(RunPhase::Running));
        assert!(running.start_time.is_some() && running.completion_time.is_none());
        let done = fold(
            PlacementMode::One,
            OnClusterLost::Fail,
            &running,
            &[(
                "m".into(),
                Some(assignment(RunPhase::Succeeded, "True", "Succeeded")),
            )],
            at(7),
        );
        assert_eq!(done.phase, Some(RunPhase::Succeeded));
        let c = done
            .conditions
            .iter()
            .find(|c| c.type_ == SUCCEEDED)
            .unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "Succeeded")
        );
        assert!(done.completion_time.is_some());
        assert!(done.member_status.is_some());
        // The Scheduled condition stays.
        assert!(
            done.conditions
                .iter()
                .any(|c| c.type_ == SCHEDULED && c.status == "True")
        );
    }

    #[test]
    fn no_assignment_yet_is_still_scheduled() {
        let base = scheduled(None, PlacementMode::One, &["m".into()], "", Some(1), at(5));
        assert_eq!(
            fold(
                PlacementMode::One,
                OnClusterLost::Fail,
                &base,
                &[("m".into(), None)],
                at(6)
            )
            .phase,
            Some(RunPhase::Scheduled)
        );
    }

    #[test]
    fn mode_all_tracks_each_cluster_and_ends_when_all_do() {
        let base = scheduled(
            None,
            PlacementMode::All,
            &["a".into(), "b".into()],
            "",
            Some(1),
            at(5),
        );
        let half = fold(
            PlacementMode::All,
            OnClusterLost::Fail,
            &base,
            &[
                (
                    "a".into(),
                    Some(assignment(RunPhase::Succeeded, "True", "Succeeded")),
                ),
                (
                    "b".into(),
                    Some(assignment(RunPhase::Running, "Unknown", "Running")),
                ),
            ],
            at(6),
        );
        assert_eq!(half.phase, Some(RunPhase::Running));
        assert_eq!(half.clusters[0].phase, RunPhase::Succeeded);
        assert_eq!(half.clusters[1].phase, RunPhase::Running);
        let failed = fold(
            PlacementMode::All,
            OnClusterLost::Fail,
            &half,
            &[
                (
                    "a".into(),
                    Some(assignment(RunPhase::Succeeded, "True", "Succeeded")),
                ),
                (
                    "b".into(),
                    Some(assignment(RunPhase::Failed, "False", "Failed")),
                ),
            ],
            at(7),
        );
        assert_eq!(failed.phase, Some(RunPhase::Failed));
        let c = failed
            .conditions
            .iter()
            .find(|c| c.type_ == SUCCEEDED)
            .unwrap();
        assert_eq!(
            (c.status.as_str(), c.message.as_str()),
            ("False", "2 of 2 clusters finished")
        );
    }

    #[test]
    fn a_run_its_member_refused_ends_failed_with_the_members_words_in_either_mode() {
        let refused = RunAssignmentStatus {
            phase: Some(RunPhase::Failed),
            run_status: Some(rejected(
                "member-1 refused PipelineRun ns/r: exceeded quota",
                &at(6),
            )),
            ..Default::default()
        };
        let one = scheduled(
            None,
            PlacementMode::One,
            &["member-1".into()],
            "",
            Some(1),
            at(5),
        );
        let ended = fold(
            PlacementMode::One,
            OnClusterLost::Fail,
            &one,
            &[("member-1".into(), Some(refused.clone()))],
            at(7),
        );
        assert_eq!(ended.phase, Some(RunPhase::Failed));
        let c = ended
            .conditions
            .iter()
            .find(|c| c.type_ == SUCCEEDED)
            .unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", MEMBER_REJECTED)
        );
        assert!(c.message.contains("exceeded quota"), "{}", c.message);
        assert_eq!(ended.completion_time, Some(at(6)));

        let all = scheduled(
            None,
            PlacementMode::All,
            &["member-1".into(), "member-2".into()],
            "",
            Some(1),
            at(5),
        );
        let copies = fold(
            PlacementMode::All,
            OnClusterLost::Fail,
            &all,
            &[
                ("member-1".into(), Some(refused)),
                (
                    "member-2".into(),
                    Some(assignment(RunPhase::Running, "Unknown", "Running")),
                ),
            ],
            at(7),
        );
        assert_eq!(
            copies.phase,
            Some(RunPhase::Running),
            "the other copy runs on"
        );
        assert_eq!(copies.clusters[0].phase, RunPhase::Failed);
        assert_eq!(copies.clusters[0].reason.as_deref(), Some(MEMBER_REJECTED));
    }

    #[test]
    fn a_run_cancelled_in_the_queue_ends_cancelled_on_no_cluster() {
        let queued = queued(None, "NoCapacity", "every cluster is full", None, at(5));
        let s = cancelled_in_queue(Some(&queued), at(9));
        assert_eq!(s.phase, Some(RunPhase::Cancelled));
        assert_eq!(s.cluster, None);
        assert_eq!(s.completion_time, Some(at(9)));
        let c = s.conditions.iter().find(|c| c.type_ == SUCCEEDED).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", CANCELLED_IN_QUEUE)
        );
    }

    #[test]
    fn a_mode_all_copy_on_a_lost_cluster_fails_or_waits_to_run_again_as_asked() {
        let base = scheduled(
            None,
            PlacementMode::All,
            &["a".into(), "b".into()],
            "",
            Some(1),
            at(5),
        );
        let mut lost = assignment(RunPhase::Running, "Unknown", "Running");
        lost.released = Some(true);
        lost.revoked = Some(true);
        lost.revoked_reason = Some("ClusterLost".into());
        lost.revoked_time = Some(at(8));
        let copies = |on_lost, lost: &RunAssignmentStatus| {
            fold(
                PlacementMode::All,
                on_lost,
                &base,
                &[
                    ("a".into(), Some(lost.clone())),
                    (
                        "b".into(),
                        Some(assignment(RunPhase::Succeeded, "True", "Succeeded")),
                    ),
                ],
                at(9),
            )
        };
        let failed = copies(OnClusterLost::Fail, &lost);
        assert_eq!(failed.clusters[0].phase, RunPhase::Failed);
        assert_eq!(failed.clusters[0].reason.as_deref(), Some("ClusterLost"));
        assert_eq!(failed.clusters[0].completion_time, Some(at(8)));
        assert_eq!(failed.phase, Some(RunPhase::Failed), "every copy ended");

        let waiting = copies(OnClusterLost::Reschedule, &lost);
        assert_eq!(waiting.clusters[0].phase, RunPhase::Queued);
        assert_eq!(waiting.phase, Some(RunPhase::Running), "not over yet");

        // A removed cluster never comes back: failed either way.
        lost.revoked_reason = Some("ClusterRemoved".into());
        let removed = copies(OnClusterLost::Reschedule, &lost);
        assert_eq!(removed.clusters[0].phase, RunPhase::Failed);
    }

    #[test]
    fn overall_phase_of_copies() {
        use RunPhase::*;
        assert_eq!(overall(&[Succeeded, Succeeded]), Succeeded);
        assert_eq!(overall(&[Succeeded, Cancelled]), Cancelled);
        assert_eq!(overall(&[Cancelled, Failed]), Failed);
        assert_eq!(overall(&[Scheduled, Scheduled]), Scheduled);
        assert_eq!(overall(&[Scheduled, Succeeded]), Running);
    }

    fn revoked_assignment(released: bool, reason: &str) -> RunAssignmentStatus {
        RunAssignmentStatus {
            released: Some(released),
            revoked: Some(true),
            revoked_reason: Some(reason.into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_revoked_unstarted_run_goes_back_to_the_queue_with_the_move_recorded() {
        let on_1 = scheduled(
            None,
            PlacementMode::One,
            &["member-1".into()],
            "",
            None,
            at(1),
        );
        for on_lost in [OnClusterLost::Fail, OnClusterLost::Reschedule] {
            let moved = revoked(
                &on_1,
                "member-1",
                1,
                &revoked_assignment(false, "Drained"),
                on_lost,
                at(5),
            );
            assert_eq!(moved.phase, Some(RunPhase::Queued));
            assert_eq!(moved.cluster, None);
            assert!(
                decided_clusters(Some(&moved)).is_empty(),
                "to be scheduled again"
            );
            assert_eq!(
                moved.attempts,
                vec![RunAttempt {
                    cluster: "member-1".into(),
                    reason: "Drained".into(),
                    time: at(5)
                }]
            );
            let c = moved
                .conditions
                .iter()
                .find(|c| c.type_ == SCHEDULED)
                .unwrap();
            assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Moved"));
            assert!(
                c.message.contains("moved off member-1 (Drained)"),
                "{}",
                c.message
            );
            // Folding the same assignment again records the move once.
            let again = revoked(
                &moved,
                "member-1",
                1,
                &revoked_assignment(false, "Drained"),
                on_lost,
                at(6),
            );
            assert_eq!(again.attempts.len(), 1);
        }
    }

    #[test]
    fn a_started_run_on_a_lost_cluster_fails_unless_it_asks_to_be_rescheduled() {
        let mut running = scheduled(
            None,
            PlacementMode::One,
            &["member-1".into()],
            "",
            None,
            at(1),
        );
        running.phase = Some(RunPhase::Running);
        let lost = revoked_assignment(true, "ClusterLost");
        let failed = revoked(&running, "member-1", 1, &lost, OnClusterLost::Fail, at(9));
        assert_eq!(failed.phase, Some(RunPhase::Failed));
        assert_eq!(
            failed.cluster.as_deref(),
            Some("member-1"),
            "where it was lost"
        );
        assert!(failed.attempts.is_empty());
        let c = failed
            .conditions
            .iter()
            .find(|c| c.type_ == SUCCEEDED)
            .unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "ClusterLost")
        );
        assert!(c.message.contains("onClusterLost"), "{}", c.message);

        let again = revoked(
            &running,
            "member-1",
            1,
            &lost,
            OnClusterLost::Reschedule,
            at(9),
        );
        assert_eq!(again.phase, Some(RunPhase::Queued));
        assert_eq!(again.attempts[0].reason, "ClusterLost");
        assert!(again.conditions.iter().all(|c| c.type_ != SUCCEEDED));
    }

    #[test]
    fn a_blocked_condition_is_written_once_and_cleared_when_resolved() {
        let mut status = RunStatus::default();
        let conflict = |t| member_run_blocked("Conflict", "a TaskRun named x is in the way", at(t));
        assert!(set_blocked(&mut status, conflict(1)), "new: write it");
        assert!(
            !set_blocked(&mut status, conflict(2)),
            "the same again: no write"
        );
        assert_eq!(status.conditions.len(), 1);
        assert!(
            set_blocked(
                &mut status,
                member_run_blocked("ClusterUnreachable", "member-1 is down", at(3))
            ),
            "another reason replaces it"
        );
        assert_eq!(status.conditions.len(), 1);
        assert_eq!(status.conditions[0].reason, "ClusterUnreachable");

        resolve(
            &mut status,
            &[(MEMBER_RUN_READY, "Created", "made")],
            &at(4),
        );
        let c = &status.conditions[0];
        assert_eq!(
            (
                c.status.as_str(),
                c.reason.as_str(),
                c.last_transition_time.clone()
            ),
            ("True", "Created", at(4))
        );
        let before = status.clone();
        resolve(
            &mut status,
            &[(MEMBER_RUN_READY, "Created", "made")],
            &at(5),
        );
        assert_eq!(status, before, "a True condition is left as it is");
    }

    #[test]
    fn a_refused_run_fails_at_once_on_no_cluster() {
        let queued = queued(None, "NoClusterReady", "waiting", None, at(1));
        let status = refused(Some(&queued), "TemplateTooLarge", "too big", at(2));
        assert_eq!(status.phase, Some(RunPhase::Failed));
        assert!(is_final(status.phase.unwrap()));
        assert_eq!(status.completion_time, Some(at(2)));
        assert!(decided_clusters(Some(&status)).is_empty());
        for type_ in [SCHEDULED, SUCCEEDED] {
            let c = status.conditions.iter().find(|c| c.type_ == type_).unwrap();
            assert_eq!(
                (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
                ("False", "TemplateTooLarge", "too big"),
                "{type_}"
            );
        }
    }

    #[test]
    fn a_status_that_differs_below_the_second_is_not_a_change() {
        let ms = |s: &str| Time(s.parse::<Timestamp>().unwrap());
        let stored = RunStatus {
            start_time: Some(ms("2026-11-26T02:50:38Z")),
            ..Default::default()
        };
        let folded = RunStatus {
            start_time: Some(ms("2026-11-26T02:50:38.353Z")),
            ..Default::default()
        };
        assert!(!changed(&stored, &folded), "the API server stores seconds");
        let later = RunStatus {
            start_time: Some(ms("2026-11-26T02:50:39Z")),
            ..Default::default()
        };
        assert!(changed(&stored, &later));
    }
}
