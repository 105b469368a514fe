//! Folding per-cluster propagation results into a federated template's
//! status: the per-cluster list, `readyClusters`, and the `Propagated`
//! condition (True only when every selected cluster is `Synced`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use tekfed_api::{ClusterPropagation, PropagationState, PropagationStatus};

/// The condition type on federated templates.
pub const PROPAGATED: &str = "Propagated";

/// Build the new status from the results for the selected clusters
/// (`results`, in cluster order) and the clusters tekfed still has to
/// remove copies from (`leaving`). `previous` keeps a condition's
/// `lastTransitionTime` while its status does not change.
pub fn fold(
    generation: Option<i64>,
    results: Vec<ClusterPropagation>,
    leaving: Vec<ClusterPropagation>,
    problem: Option<(&str, String)>,
    previous: Option<&PropagationStatus>,
    now: Time,
) -> PropagationStatus {
    let synced = results
        .iter()
        .filter(|r| r.state == PropagationState::Synced)
        .count();
    let selected = results.len();
    let (status, reason, message) = if let Some((reason, message)) = problem {
        ("False", reason.to_owned(), message)
    } else if selected == 0 {
        (
            "False",
            "NoClusterSelected".to_owned(),
            "the placement selects no member cluster".to_owned(),
        )
    } else if synced == selected {
        (
            "True",
            "AllSynced".to_owned(),
            format!("in sync on {synced} of {selected} clusters"),
        )
    } else {
        let worst = results
            .iter()
            .find(|r| {
                matches!(
                    r.state,
                    PropagationState::Failed | PropagationState::Conflict
                )
            })
            .or_else(|| results.iter().find(|r| r.state != PropagationState::Synced));
        let (reason, detail) = match worst {
            Some(r) => (
                format!("{:?}", r.state),
                format!("; {}: {}", r.cluster, r.message.clone().unwrap_or_default()),
            ),
            None => ("Pending".to_owned(), String::new()),
        };
        (
            "False",
            reason,
            format!("in sync on {synced} of {selected} clusters{detail}"),
        )
    };
    let condition = condition(previous, generation, status, &reason, &message, now);
    let mut clusters = results;
    clusters.extend(leaving);
    PropagationStatus {
        observed_generation: generation,
        conditions: vec![condition],
        ready_clusters: Some(format!("{synced}/{selected}")),
        clusters,
    }
}

fn condition(
    previous: Option<&PropagationStatus>,
    generation: Option<i64>,
    status: &str,
    reason: &str,
    message: &str,
    now: Time,
) -> Condition {
    let last = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == PROPAGATED))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(now);
    Condition {
        type_: PROPAGATED.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: generation,
        last_transition_time: last,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn result(cluster: &str, state: PropagationState, message: Option<&str>) -> ClusterPropagation {
        ClusterPropagation {
            cluster: cluster.into(),
            state,
            message: message.map(Into::into),
            generation: Some(3),
        }
    }

    #[test]
    fn propagated_only_when_every_selected_cluster_is_synced() {
        let all = fold(
            Some(3),
            vec![
                result("a", PropagationState::Synced, None),
                result("b", PropagationState::Synced, None),
            ],
            vec![],
            None,
            None,
            at(10),
        );
        assert_eq!(all.conditions[0].status, "True");
        assert_eq!(all.ready_clusters.as_deref(), Some("2/2"));
        assert_eq!(all.observed_generation, Some(3));

        let one_failed = fold(
            Some(3),
            vec![
                result("a", PropagationState::Synced, None),
                result(
                    "b",
                    PropagationState::Failed,
                    Some("override 0 (replace /spec/x) for cluster b failed: path is invalid"),
                ),
            ],
            vec![],
            None,
            None,
            at(10),
        );
        let c = &one_failed.conditions[0];
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Failed"));
        assert!(
            c.message.contains("b: override 0 (replace /spec/x)"),
            "{}",
            c.message
        );
        assert_eq!(one_failed.ready_clusters.as_deref(), Some("1/2"));
    }

    #[test]
    fn no_selected_cluster_is_said_plainly() {
        let none = fold(Some(1), vec![], vec![], None, None, at(10));
        assert_eq!(none.conditions[0].reason, "NoClusterSelected");
        assert_eq!(none.ready_clusters.as_deref(), Some("0/0"));
    }

    #[test]
    fn a_placement_problem_wins() {
        let bad = fold(
            Some(1),
            vec![],
            vec![],
            Some((
                "InvalidPlacement",
                "spec.placement.clusterSelector is invalid".into(),
            )),
            None,
            at(10),
        );
        assert_eq!(bad.conditions[0].reason, "InvalidPlacement");
    }

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let first = fold(
            Some(1),
            vec![result("a", PropagationState::Synced, None)],
            vec![],
            None,
            None,
            at(10),
        );
        let same = fold(
            Some(2),
            vec![result("a", PropagationState::Synced, None)],
            vec![],
            None,
            Some(&first),
            at(20),
        );
        assert_eq!(same.conditions[0].last_transition_time, at(10));
        let changed = fold(
            Some(2),
            vec![result("a", PropagationState::Pending, None)],
            vec![],
            None,
            Some(&same),
            at(30),
        );
        assert_eq!(changed.conditions[0].last_transition_time, at(30));
    }

    #[test]
    fn leaving_clusters_are_listed_but_not_counted() {
        let s = fold(
            Some(1),
            vec![result("a", PropagationState::Synced, None)],
            vec![result("b", PropagationState::Pending, Some("removing"))],
            None,
            None,
            at(10),
        );
        assert_eq!(s.ready_clusters.as_deref(), Some("1/1"));
        assert_eq!(s.conditions[0].status, "True");
        assert_eq!(s.clusters.len(), 2);
    }
}
