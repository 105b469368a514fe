//! A member's health, as its `MemberCluster` status says it: `Reachable`
//! (the hub's own probe of the member's API server), `AgentReady` (the
//! agent's last heartbeat, timed on the hub's clock against the grace) and
//! `Ready`, both of them, which runs need. Pure, so every case is a unit
//! test; [`super::controller`] probes, reads the agent's report, and writes.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use tekfed_api::{MemberClusterStatus, MemberReportStatus};

use super::Unreachable;

/// The condition saying whether the hub reaches the member.
pub const REACHABLE: &str = "Reachable";
/// The condition saying whether the member's agent heartbeat is fresh.
pub const AGENT_READY: &str = "AgentReady";
/// Reachable and AgentReady: runs may be scheduled here.
pub const READY: &str = "Ready";

/// The `MemberCluster` status from what the hub saw (`version`: the probe)
/// and what the agent reported. `Ready` = `Reachable` and `AgentReady` (a
/// heartbeat younger than `grace`); runs need `Ready`.
pub fn fold_member_status(
    previous: &MemberClusterStatus,
    version: Result<String, Unreachable>,
    report: Option<&MemberReportStatus>,
    unschedulable: bool,
    assigned: i64,
    grace: Duration,
    now: k8s_openapi::jiff::Timestamp,
) -> MemberClusterStatus {
    let (reachable, reason, message, kubernetes_version) = match version {
        Ok(v) => (
            true,
            "Connected".to_owned(),
            "the hub reaches the member's API server".to_owned(),
            Some(v),
        ),
        Err(u) => (
            false,
            u.reason.to_owned(),
            u.message,
            previous.kubernetes_version.clone(),
        ),
    };
    let heartbeat = report.and_then(|r| r.heartbeat_time.clone());
    let age = heartbeat
        .as_ref()
        .map(|t| now.duration_since(t.0).unsigned_abs());
    let (agent_ready, agent_reason, agent_message) = match age {
        None => (
            false,
            "NoHeartbeat",
            "no heartbeat from the member's agent yet; is tekfed-agent running there?".to_owned(),
        ),
        Some(age) if age <= grace => (
            true,
            "HeartbeatFresh",
            format!("last heartbeat {}s ago", age.as_secs()),
        ),
        Some(age) => (
            false,
            "HeartbeatLost",
            format!(
                "no heartbeat for {}s (grace {}s)",
                age.as_secs(),
                grace.as_secs()
            ),
        ),
    };
    let ready = reachable && agent_ready;
    let (ready_reason, ready_message) = if ready {
        (
            "Ready".to_owned(),
            "reachable, and the agent's heartbeat is fresh".to_owned(),
        )
    } else if !reachable {
        (reason.clone(), message.clone())
    } else {
        (agent_reason.to_owned(), agent_message.clone())
    };
    let condition = |type_: &str, ok: bool, reason: String, message: String| {
        let old = previous.conditions.iter().find(|c| c.type_ == type_);
        let status = if ok { "True" } else { "False" };
        Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason,
            message,
            observed_generation: None,
            last_transition_time: old
                .filter(|c| c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now)),
        }
    };
    MemberClusterStatus {
        conditions: vec![
            condition(REACHABLE, reachable, reason, message),
            condition(
                AGENT_READY,
                agent_ready,
                agent_reason.to_owned(),
                agent_message,
            ),
            condition(READY, ready, ready_reason, ready_message),
        ],
        schedulable: Some(ready && !unschedulable),
        last_heartbeat_time: heartbeat,
        kubernetes_version: report
            .and_then(|r| r.kubernetes_version.clone())
            .or(kubernetes_version),
        tekton_version: report.and_then(|r| r.tekton_version.clone()),
        load: report.and_then(|r| r.load.clone()),
        assigned_runs: Some(assigned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> k8s_openapi::jiff::Timestamp {
        k8s_openapi::jiff::Timestamp::from_second(s).unwrap()
    }

    fn report(heartbeat: i64) -> MemberReportStatus {
        MemberReportStatus {
            heartbeat_time: Some(Time(at(heartbeat))),
            load: Some(tekfed_api::ClusterLoad {
                running: 3,
                pending: 1,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn status_of(s: &MemberClusterStatus, type_: &str) -> (String, String) {
        let c = s.conditions.iter().find(|c| c.type_ == type_).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn ready_needs_reachable_and_a_fresh_heartbeat() {
        let grace = Duration::from_secs(30);
        let fresh = fold_member_status(
            &Default::default(),
            Ok("v1.37.2".into()),
            Some(&report(100)),
            false,
            2,
            grace,
            at(110),
        );
        assert_eq!(status_of(&fresh, READY), ("True".into(), "Ready".into()));
        assert_eq!(fresh.schedulable, Some(true));
        assert_eq!(fresh.load.as_ref().unwrap().running, 3);
        assert_eq!(fresh.assigned_runs, Some(2));

        let lost = fold_member_status(
            &fresh,
            Ok("v1.37.2".into()),
            Some(&report(100)),
            false,
            2,
            grace,
            at(200),
        );
        assert_eq!(
            status_of(&lost, AGENT_READY),
            ("False".into(), "HeartbeatLost".into())
        );
        assert_eq!(
            status_of(&lost, READY),
            ("False".into(), "HeartbeatLost".into())
        );
        assert_eq!(lost.schedulable, Some(false));

        let none = fold_member_status(
            &Default::default(),
            Ok("v1.37.2".into()),
            None,
            false,
            0,
            grace,
            at(200),
        );
        assert_eq!(status_of(&none, AGENT_READY).1, "NoHeartbeat");

        let down = Unreachable {
            reason: "Unreachable",
            message: "connection refused".into(),
        };
        let unreachable = fold_member_status(
            &fresh,
            Err(down),
            Some(&report(195)),
            false,
            0,
            grace,
            at(200),
        );
        assert_eq!(
            status_of(&unreachable, READY),
            ("False".into(), "Unreachable".into())
        );
    }

    #[test]
    fn a_cordoned_ready_cluster_is_not_schedulable() {
        let s = fold_member_status(
            &Default::default(),
            Ok("v".into()),
            Some(&report(100)),
            true,
            0,
            Duration::from_secs(30),
            at(101),
        );
        assert_eq!(status_of(&s, READY).0, "True");
        assert_eq!(s.schedulable, Some(false));
    }

    #[test]
    fn transition_times_hold_while_nothing_changes() {
        let grace = Duration::from_secs(30);
        let first = fold_member_status(
            &Default::default(),
            Ok("v".into()),
            Some(&report(100)),
            false,
            0,
            grace,
            at(101),
        );
        let later = fold_member_status(
            &first,
            Ok("v".into()),
            Some(&report(100)),
            false,
            0,
            grace,
            at(105),
        );
        assert_eq!(
            first.conditions[0].last_transition_time,
            later.conditions[0].last_transition_time
        );
    }
}
