//! Reading Tekton run status: the one place that maps a TaskRun's or
//! PipelineRun's `status` (and its `spec.status`) to a tekfed [`RunPhase`].
//!
//! Tekton reports a run's life in the `Succeeded` condition: `Unknown`
//! while it runs (reason `Running`, or `PipelineRunPending` while held),
//! `True` when it succeeded, `False` when it failed or was cancelled (the
//! reason tells which).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::RunKind;
use crate::runs::RunPhase;

/// A member's TaskRun or PipelineRun as tekfed reads it: `spec.status`
/// (held or cancelled) typed, and Tekton's `status`, mirrored to the hub as
/// it is and read through [`phase`]. The rest of the spec is not kept: an
/// agent's watch stores every run tekfed made on its cluster.
pub type TektonRun = kube::core::Object<TektonRunSpec, Value>;

/// The part of a Tekton run's spec tekfed reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TektonRunSpec {
    /// `PipelineRunPending` while held; a cancel value once cancelled
    /// ([`cancel_values`]); none while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// `spec.status` that holds a PipelineRun (Tekton does not start it).
pub const PIPELINE_RUN_PENDING: &str = "PipelineRunPending";

/// The `spec.status` values that cancel a run of `kind`, as Tekton takes them.
pub fn cancel_values(kind: RunKind) -> &'static [&'static str] {
    match kind {
        RunKind::TaskRun => &["TaskRunCancelled"],
        RunKind::PipelineRun => &["Cancelled", "CancelledRunFinally", "StoppedRunFinally"],
    }
}

/// Reasons of a `Succeeded=False` condition that mean "cancelled".
const CANCELLED_REASONS: [&str; 4] = [
    "Cancelled",
    "TaskRunCancelled",
    "CancelledRunningFinally",
    "StoppedRunningFinally",
];

/// The `Succeeded` condition of a Tekton status, if any.
pub fn succeeded_condition(status: &Value) -> Option<&Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Succeeded")
}

/// The phase of a member run with this `status`. A run with no status yet,
/// or held, is `Scheduled` (it exists but has not started).
pub fn phase(status: &Value) -> RunPhase {
    let Some(condition) = succeeded_condition(status) else {
        return RunPhase::Scheduled;
    };
    let reason = condition["reason"].as_str().unwrap_or_default();
    match condition["status"].as_str() {
        Some("True") => RunPhase::Succeeded,
        Some("False") if CANCELLED_REASONS.contains(&reason) => RunPhase::Cancelled,
        Some("False") => RunPhase::Failed,
        _ if reason == PIPELINE_RUN_PENDING || reason == "Pending" => RunPhase::Scheduled,
        _ => RunPhase::Running,
    }
}

/// Whether a phase is final: a run in it never changes again.
pub fn is_final(phase: RunPhase) -> bool {
    matches!(
        phase,
        RunPhase::Succeeded | RunPhase::Failed | RunPhase::Cancelled
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn with(status: &str, reason: &str) -> Value {
        json!({"conditions": [{"type": "Succeeded", "status": status, "reason": reason}]})
    }

    #[test]
    fn tekton_conditions_map_to_phases() {
        assert_eq!(phase(&json!({})), RunPhase::Scheduled);
        assert_eq!(phase(&Value::Null), RunPhase::Scheduled);
        assert_eq!(
            phase(&with("Unknown", "PipelineRunPending")),
            RunPhase::Scheduled
        );
        assert_eq!(phase(&with("Unknown", "Running")), RunPhase::Running);
        assert_eq!(phase(&with("Unknown", "Started")), RunPhase::Running);
        assert_eq!(phase(&with("True", "Succeeded")), RunPhase::Succeeded);
        assert_eq!(phase(&with("True", "Completed")), RunPhase::Succeeded);
        assert_eq!(phase(&with("False", "Failed")), RunPhase::Failed);
        assert_eq!(
            phase(&with("False", "PipelineRunTimeout")),
            RunPhase::Failed
        );
        assert_eq!(phase(&with("False", "Cancelled")), RunPhase::Cancelled);
        assert_eq!(
            phase(&with("False", "TaskRunCancelled")),
            RunPhase::Cancelled
        );
        assert_eq!(
            phase(&with("False", "StoppedRunningFinally")),
            RunPhase::Cancelled
        );
    }

    #[test]
    fn a_run_reads_as_its_spec_status_and_whole_status() {
        let run: TektonRun = serde_json::from_value(json!({
            "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
            "metadata": {"name": "build", "namespace": "ci"},
            "spec": {"status": "PipelineRunPending", "pipelineRef": {"name": "p"}},
            "status": {"conditions": [{"type": "Succeeded", "status": "Unknown", "reason": "PipelineRunPending"}]},
        }))
        .unwrap();
        assert_eq!(run.spec.status.as_deref(), Some(PIPELINE_RUN_PENDING));
        assert_eq!(
            phase(run.status.as_ref().unwrap_or(&Value::Null)),
            RunPhase::Scheduled
        );
        let started: TektonRun = serde_json::from_value(
            json!({"metadata": {"name": "t"}, "spec": {"taskRef": {"name": "x"}}}),
        )
        .unwrap();
        assert_eq!(started.spec.status, None);
        assert_eq!(started.status, None);
    }

    #[test]
    fn only_ends_are_final() {
        assert!(
            is_final(RunPhase::Succeeded)
                && is_final(RunPhase::Failed)
                && is_final(RunPhase::Cancelled)
        );
        assert!(
            !is_final(RunPhase::Queued)
                && !is_final(RunPhase::Scheduled)
                && !is_final(RunPhase::Running)
        );
    }
}
