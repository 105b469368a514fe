//! Counting a member's load from its runs: started and not finished is
//! running; created and not started (held included) is pending.

use serde_json::Value;
use tekfed_crds::ClusterLoad;
use tekfed_crds::runs::RunPhase;
use tekfed_crds::tekton::phase;

/// Load from the `status` of each run (TaskRuns and PipelineRuns alike).
pub fn count<'a>(statuses: impl IntoIterator<Item = &'a Value>) -> ClusterLoad {
    let mut load = ClusterLoad::default();
    for status in statuses {
        match phase(status) {
            RunPhase::Running => load.running += 1,
            RunPhase::Queued | RunPhase::Scheduled => load.pending += 1,
            RunPhase::Succeeded | RunPhase::Failed | RunPhase::Cancelled => {}
        }
    }
    load
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn running_pending_and_finished_runs_are_told_apart() {
        let statuses = [
            json!({}),
            json!({"conditions": [{"type": "Succeeded", "status": "Unknown", "reason": "PipelineRunPending"}]}),
            json!({"conditions": [{"type": "Succeeded", "status": "Unknown", "reason": "Running"}]}),
            json!({"conditions": [{"type": "Succeeded", "status": "True", "reason": "Succeeded"}]}),
            json!({"conditions": [{"type": "Succeeded", "status": "False", "reason": "Failed"}]}),
        ];
        let load = count(&statuses);
        assert_eq!((load.running, load.pending), (1, 2));
    }
}
