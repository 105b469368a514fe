//! The Kubernetes Events a federated run gets: one per transition a user
//! looks for in `kubectl describe ftr/NAME` — scheduled to a cluster (with
//! the candidates' loads), queued and why, moved off a cluster, member run
//! blocked, started, succeeded, failed or cancelled, as Tekton gives its
//! own runs. Each is a write to the hub's API server, published in the
//! background so a status write never waits for one; a run that simply
//! starts and succeeds gets three. A native run's go on the native run
//! (`reconcile::event_target`). Decided from the status before and after a
//! write (pure, so every case is a unit test); the writer publishes them
//! once the write has landed, so an event never tells of a status that was
//! not kept.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use tekfed_api::{RunPhase, RunStatus};

use super::status::{DEPENDENCIES_READY, MEMBER_RUN_READY, SCHEDULED, SUCCEEDED};

/// One Event to publish on a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunEvent {
    /// Shown as `Warning` rather than `Normal`.
    pub warning: bool,
    /// `PascalCase`, shown as the Event's reason.
    pub reason: String,
    /// One line for people.
    pub note: String,
}

fn normal(reason: &str, note: String) -> RunEvent {
    RunEvent {
        warning: false,
        reason: reason.into(),
        note,
    }
}

fn warning(reason: &str, note: String) -> RunEvent {
    RunEvent {
        warning: true,
        reason: reason.into(),
        note,
    }
}

fn condition<'a>(status: Option<&'a RunStatus>, type_: &str) -> Option<&'a Condition> {
    status?.conditions.iter().find(|c| c.type_ == type_)
}

/// Whether a condition became `False` with a reason it did not have.
fn newly_false<'a>(
    old: Option<&RunStatus>,
    new: &'a RunStatus,
    type_: &str,
) -> Option<&'a Condition> {
    let now = condition(Some(new), type_).filter(|c| c.status == "False")?;
    let before = condition(old, type_);
    let same = before.is_some_and(|b| b.status == "False" && b.reason == now.reason);
    (!same).then_some(now)
}

/// The Events for a run whose status goes from `old` to `new`.
pub fn transitions(old: Option<&RunStatus>, new: &RunStatus) -> Vec<RunEvent> {
    let mut events = Vec::new();
    let earlier = old.map_or(0, |o| o.attempts.len());
    for attempt in new.attempts.iter().skip(earlier) {
        events.push(normal(
            "Moved",
            format!("moved off {} ({})", attempt.cluster, attempt.reason),
        ));
    }
    if let Some(c) = newly_false(old, new, DEPENDENCIES_READY) {
        events.push(warning(
            &c.reason,
            format!("waiting for dependencies: {}", c.message),
        ));
    }
    if let Some(c) = newly_false(old, new, SCHEDULED) {
        events.push(normal(
            "Queued",
            format!("queued ({}): {}", c.reason, c.message),
        ));
    }
    let cluster = new.cluster.as_deref();
    if let Some(cluster) = cluster
        && old.and_then(|o| o.cluster.as_deref()) != Some(cluster)
    {
        // The condition's message says where and why (the candidates'
        // loads); older statuses only name the cluster.
        let note = condition(Some(new), SCHEDULED)
            .filter(|c| c.status == "True" && !c.message.is_empty())
            .map(|c| {
                if c.message.starts_with("scheduled to ") {
                    c.message.clone()
                } else {
                    format!("scheduled to {cluster}: {}", c.message)
                }
            })
            .unwrap_or_else(|| format!("scheduled to {cluster}"));
        events.push(normal("Scheduled", note));
    }
    let before: Vec<&str> = old.map_or(Vec::new(), |o| {
        o.clusters.iter().map(|c| c.cluster.as_str()).collect()
    });
    let added: Vec<&str> = new
        .clusters
        .iter()
        .map(|c| c.cluster.as_str())
        .filter(|c| !before.contains(c))
        .collect();
    if !added.is_empty() {
        events.push(normal(
            "Scheduled",
            format!("scheduled to {}", added.join(", ")),
        ));
    }
    if let Some(c) = newly_false(old, new, MEMBER_RUN_READY) {
        events.push(warning(
            &c.reason,
            format!("member run blocked: {}", c.message),
        ));
    }
    let (was, is) = (old.and_then(|o| o.phase), new.phase);
    if was != is {
        let on = cluster.map(|c| format!(" on {c}")).unwrap_or_default();
        let outcome = condition(Some(new), SUCCEEDED)
            .map(|c| {
                let message = if c.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", c.message)
                };
                format!(" ({}){message}", c.reason)
            })
            .unwrap_or_default();
        match is {
            Some(RunPhase::Running) => events.push(normal("Started", format!("started{on}"))),
            Some(RunPhase::Succeeded) => {
                events.push(normal("Succeeded", format!("succeeded{on}{outcome}")))
            }
            Some(RunPhase::Failed) => {
                events.push(warning("Failed", format!("failed{on}{outcome}")))
            }
            Some(RunPhase::Cancelled) => {
                events.push(normal("Cancelled", format!("cancelled{on}{outcome}")))
            }
            _ => {}
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use tekfed_api::RunAttempt;

    use super::*;

    fn cond(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
            observed_generation: None,
        }
    }

    fn reasons(events: &[RunEvent]) -> Vec<&str> {
        events.iter().map(|e| e.reason.as_str()).collect()
    }

    #[test]
    fn a_run_that_queues_then_lands_then_fails_tells_each_step_once() {
        let queued = RunStatus {
            phase: Some(RunPhase::Queued),
            conditions: vec![cond(
                SCHEDULED,
                "False",
                "AllClustersFull",
                "3 clusters full",
            )],
            ..Default::default()
        };
        let first = transitions(None, &queued);
        assert_eq!(reasons(&first), ["Queued"]);
        assert!(
            first[0].note.contains("AllClustersFull") && first[0].note.contains("3 clusters full")
        );
        assert!(transitions(Some(&queued), &queued).is_empty(), "no repeat");

        let scheduled = RunStatus {
            phase: Some(RunPhase::Scheduled),
            cluster: Some("member-2".into()),
            conditions: vec![cond(SCHEDULED, "True", "Scheduled", "least loaded (1/5)")],
            ..Default::default()
        };
        let events = transitions(Some(&queued), &scheduled);
        assert_eq!(reasons(&events), ["Scheduled"]);
        assert_eq!(events[0].note, "scheduled to member-2: least loaded (1/5)");
        let explained = RunStatus {
            conditions: vec![cond(
                SCHEDULED,
                "True",
                "Scheduled",
                "scheduled to member-2 as the least loaded; candidates: member-2 (1 runs, chosen)",
            )],
            ..scheduled.clone()
        };
        assert_eq!(
            transitions(Some(&queued), &explained)[0].note,
            "scheduled to member-2 as the least loaded; candidates: member-2 (1 runs, chosen)",
            "the candidates' loads, and where, said once"
        );

        let running = RunStatus {
            phase: Some(RunPhase::Running),
            ..scheduled.clone()
        };
        let events = transitions(Some(&scheduled), &running);
        assert_eq!(reasons(&events), ["Started"]);
        assert_eq!(events[0].note, "started on member-2");
        assert!(
            transitions(Some(&running), &running).is_empty(),
            "no repeat"
        );

        let mut failed = RunStatus {
            phase: Some(RunPhase::Failed),
            ..running.clone()
        };
        failed
            .conditions
            .push(cond(SUCCEEDED, "False", "Failed", "step build exited 3"));
        let events = transitions(Some(&running), &failed);
        assert_eq!(reasons(&events), ["Failed"]);
        assert!(events[0].warning);
        assert_eq!(
            events[0].note,
            "failed on member-2 (Failed): step build exited 3"
        );
    }

    #[test]
    fn a_move_says_where_from_and_a_block_warns() {
        let on_one = RunStatus {
            phase: Some(RunPhase::Scheduled),
            cluster: Some("member-1".into()),
            ..Default::default()
        };
        let moved = RunStatus {
            phase: Some(RunPhase::Queued),
            cluster: None,
            attempts: vec![RunAttempt {
                cluster: "member-1".into(),
                reason: "Drained".into(),
                time: Time(Timestamp::UNIX_EPOCH),
            }],
            ..Default::default()
        };
        let events = transitions(Some(&on_one), &moved);
        assert_eq!(reasons(&events), ["Moved"]);
        assert_eq!(events[0].note, "moved off member-1 (Drained)");

        let blocked = RunStatus {
            conditions: vec![cond(
                MEMBER_RUN_READY,
                "False",
                "WaitingForServiceAccount",
                "no default ServiceAccount in ci on member-1 yet",
            )],
            ..on_one.clone()
        };
        let events = transitions(Some(&on_one), &blocked);
        assert_eq!(reasons(&events), ["WaitingForServiceAccount"]);
        assert!(events[0].warning);
        assert!(transitions(Some(&blocked), &blocked).is_empty());
    }

    #[test]
    fn mode_all_names_the_clusters_added() {
        use tekfed_api::RunClusterStatus;
        let one = |c: &str| RunClusterStatus {
            cluster: c.into(),
            ..Default::default()
        };
        let before = RunStatus {
            clusters: vec![one("a")],
            ..Default::default()
        };
        let after = RunStatus {
            clusters: vec![one("a"), one("b"), one("c")],
            ..Default::default()
        };
        let events = transitions(Some(&before), &after);
        assert_eq!(events, [normal("Scheduled", "scheduled to b, c".into())]);
    }
}
