//! Counting a member's load from its runs: started and not finished is
//! running; created and not started (held included) is pending.

use serde_json::Value;
use tekfed_api::ClusterLoad;
use tekfed_api::runs::RunPhase;
use tekfed_api::tekton::phase;

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

/// CPU in millicores from a Kubernetes quantity (`2`, `500m`, `1.5`).
pub fn cpu_millis(quantity: &str) -> Option<i64> {
    let q = quantity.trim();
    if let Some(m) = q.strip_suffix('m') {
        return m.parse::<f64>().ok().map(|v| v.round() as i64);
    }
    q.parse::<f64>().ok().map(|v| (v * 1000.0).round() as i64)
}

/// Bytes from a Kubernetes quantity (`512Mi`, `1G`, `1e3`, `128974848`).
pub fn bytes(quantity: &str) -> Option<i64> {
    let q = quantity.trim();
    const UNITS: [(&str, f64); 12] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Pi", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Ei", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    for (suffix, factor) in UNITS {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<f64>().ok().map(|v| (v * factor).round() as i64);
        }
    }
    if let Some(m) = q.strip_suffix('m') {
        return m.parse::<f64>().ok().map(|v| (v / 1000.0).round() as i64);
    }
    q.parse::<f64>().ok().map(|v| v.round() as i64)
}

/// Allocatable CPU and memory over `nodes`, and what `pods` (scheduled and
/// not finished) request: `(cpu allocatable, cpu requested, memory
/// allocatable, memory requested)`, in millicores and bytes.
pub fn capacity<'a>(
    nodes: impl IntoIterator<Item = &'a k8s_openapi::api::core::v1::Node>,
    pods: impl IntoIterator<Item = &'a k8s_openapi::api::core::v1::Pod>,
) -> (i64, i64, i64, i64) {
    let (mut cpu, mut memory) = (0, 0);
    for node in nodes {
        let allocatable = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
        cpu += allocatable
            .and_then(|a| cpu_millis(&a.get("cpu")?.0))
            .unwrap_or(0);
        memory += allocatable
            .and_then(|a| bytes(&a.get("memory")?.0))
            .unwrap_or(0);
    }
    let (mut cpu_requested, mut memory_requested) = (0, 0);
    for pod in pods {
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .unwrap_or_default();
        let scheduled = pod.spec.as_ref().is_some_and(|s| s.node_name.is_some());
        if !scheduled || phase == "Succeeded" || phase == "Failed" {
            continue;
        }
        for container in pod.spec.iter().flat_map(|s| &s.containers) {
            let requests = container
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref());
            cpu_requested += requests
                .and_then(|r| cpu_millis(&r.get("cpu")?.0))
                .unwrap_or(0);
            memory_requested += requests
                .and_then(|r| bytes(&r.get("memory")?.0))
                .unwrap_or(0);
        }
    }
    (cpu, cpu_requested, memory, memory_requested)
}

#[cfg(test)]
mod quantity_tests {
    use super::*;

    #[test]
    fn quantities_parse_as_kubernetes_writes_them() {
        assert_eq!(cpu_millis("2"), Some(2000));
        assert_eq!(cpu_millis("500m"), Some(500));
        assert_eq!(cpu_millis("1.5"), Some(1500));
        assert_eq!(bytes("512Mi"), Some(512 * 1024 * 1024));
        assert_eq!(bytes("1G"), Some(1_000_000_000));
        assert_eq!(bytes("128974848"), Some(128_974_848));
        assert_eq!(cpu_millis("lots"), None);
    }

    #[test]
    fn capacity_sums_nodes_and_scheduled_unfinished_pods() {
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(serde_json::json!({
            "status": {"allocatable": {"cpu": "4", "memory": "8Gi"}},
        }))
        .unwrap();
        let pod = |node: Option<&str>, phase: &str| -> k8s_openapi::api::core::v1::Pod {
            serde_json::from_value(serde_json::json!({
                "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"requests": {"cpu": "250m", "memory": "1Gi"}}}]},
                "status": {"phase": phase},
            }))
            .unwrap()
        };
        let pods = [
            pod(Some("n"), "Running"),
            pod(Some("n"), "Succeeded"),
            pod(None, "Pending"),
        ];
        assert_eq!(capacity(&[node], &pods), (4000, 250, 8 << 30, 1 << 30));
    }
}
