//! `kubectl tekfed describe`: one federated run as a person reads it —
//! where it ran and why there (the scheduler's candidates and their
//! loads), why it waits, its moves, its conditions, the member run's own
//! status, its TaskRuns with their steps' states (through the hub's
//! `logs.tekfed.io` API, so hub credentials are enough), and its Events.

use std::fmt::Write as _;

use k8s_openapi::api::core::v1::Event;
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams};
use serde_json::Value;
use tekfed_api::logs::{RunSteps, steps_path};
use tekfed_api::{RunKind, RunStatus};

use crate::logs::{explain, resolve};

/// Print the description of a run.
pub async fn describe(
    client: &Client,
    namespace: Option<String>,
    run: (Option<RunKind>, String),
) -> anyhow::Result<()> {
    let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
    let (kind, name) = run;
    let kind = resolve(client, &namespace, kind, &name).await?;
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &namespace, &kind.federated_resource());
    let object = api
        .get(&name)
        .await
        .map_err(|e| explain(e, kind, &namespace, &name))?;
    let status = RunStatus::of(&object.data);
    let clusters: Vec<String> = if status.clusters.is_empty() {
        status.cluster.iter().cloned().collect()
    } else {
        status.clusters.iter().map(|c| c.cluster.clone()).collect()
    };
    let mut steps = Vec::new();
    for cluster in &clusters {
        let request = http::Request::get(steps_path(kind, &namespace, &name, Some(cluster)))
            .body(Vec::new())?;
        let answer = match client.request::<RunSteps>(request).await {
            Ok(s) => Ok(s),
            Err(e) => Err(explain(e, kind, &namespace, &name).to_string()),
        };
        steps.push((cluster.clone(), answer));
    }
    // A native run's Events are on the native run (its owner).
    let native = object
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(tekfed_api::native::LABEL_NATIVE));
    let uid = object
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| native && o.controller == Some(true))
        .map(|o| o.uid.clone())
        .or_else(|| object.metadata.uid.clone())
        .unwrap_or_default();
    let events = Api::<Event>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default().fields(&format!("involvedObject.uid={uid}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    print!(
        "{}",
        render(kind, &namespace, &name, &status, &steps, &events)
    );
    Ok(())
}

/// The description (pure, so tests can read it).
pub fn render(
    kind: RunKind,
    namespace: &str,
    name: &str,
    status: &RunStatus,
    steps: &[(String, Result<RunSteps, String>)],
    events: &[Event],
) -> String {
    let mut out = String::new();
    let field = |out: &mut String, label: &str, value: &str| {
        let _ = writeln!(out, "{:<12}{value}", format!("{label}:"));
    };
    field(&mut out, "Name", name);
    field(&mut out, "Namespace", namespace);
    field(&mut out, "Kind", kind.federated_kind());
    let phase = status
        .phase
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "Queued".into());
    field(&mut out, "Phase", &phase);
    if let Some(cluster) = &status.cluster {
        field(&mut out, "Cluster", cluster);
    }
    let condition = |type_: &str| status.conditions.iter().find(|c| c.type_ == type_);
    if let Some(c) = condition("Scheduled") {
        if c.status == "True" {
            let when = status
                .scheduled_time
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default();
            field(
                &mut out,
                "Scheduled",
                format!("{when} {}", c.message).trim(),
            );
        } else {
            field(&mut out, "Waiting", &format!("{}: {}", c.reason, c.message));
        }
    }
    if let Some(t) = &status.start_time {
        field(&mut out, "Started", &t.0.to_string());
    }
    if let Some(t) = &status.completion_time {
        field(&mut out, "Completed", &t.0.to_string());
    }
    if !status.attempts.is_empty() {
        let _ = writeln!(out, "Moves:");
        for a in &status.attempts {
            let _ = writeln!(out, "  off {} at {}: {}", a.cluster, a.time.0, a.reason);
        }
    }
    if !status.clusters.is_empty() {
        let _ = writeln!(out, "Clusters:");
        let _ = writeln!(out, "  {:<20}{:<12}REASON", "CLUSTER", "PHASE");
        for c in &status.clusters {
            let reason = match (&c.reason, &c.message) {
                (Some(r), Some(m)) => format!("{r}: {m}"),
                (Some(r), None) => r.clone(),
                _ => String::new(),
            };
            let _ = writeln!(out, "  {:<20}{:<12}{reason}", c.cluster, c.phase.as_str());
        }
    }
    if !status.conditions.is_empty() {
        let _ = writeln!(out, "Conditions:");
        let _ = writeln!(
            out,
            "  {:<20}{:<8}{:<28}MESSAGE",
            "TYPE", "STATUS", "REASON"
        );
        for c in &status.conditions {
            let _ = writeln!(
                out,
                "  {:<20}{:<8}{:<28}{}",
                c.type_, c.status, c.reason, c.message
            );
        }
    }
    if let Some(member) = &status.member_status {
        let on = status
            .cluster
            .as_deref()
            .map(|c| format!(" on {c}"))
            .unwrap_or_default();
        let _ = writeln!(out, "Member run{on}:");
        for c in member["conditions"].as_array().into_iter().flatten() {
            let text = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            let _ = writeln!(
                out,
                "  {} {} {}: {}",
                text("type"),
                text("status"),
                text("reason"),
                text("message")
            );
        }
        let results = member["results"]
            .as_array()
            .or_else(|| member["pipelineResults"].as_array())
            .into_iter()
            .flatten()
            .map(|r| {
                format!(
                    "{}={}",
                    r["name"].as_str().unwrap_or_default(),
                    value_text(&r["value"])
                )
            })
            .collect::<Vec<_>>();
        if !results.is_empty() {
            let _ = writeln!(out, "  Results: {}", results.join(", "));
        }
    }
    for (cluster, answer) in steps {
        let _ = writeln!(out, "Task runs on {cluster}:");
        match answer {
            Err(message) => {
                let _ = writeln!(out, "  (not available: {message})");
            }
            Ok(s) if s.task_runs.is_empty() => {
                let _ = writeln!(out, "  (none: not started yet, or their pods are gone)");
            }
            Ok(s) => {
                for tr in &s.task_runs {
                    let _ = writeln!(
                        out,
                        "  {} ({}, pod {}): {}",
                        tr.task, tr.task_run, tr.pod, tr.phase
                    );
                    for step in &tr.steps {
                        let mut line = format!("    {:<16}{}", step.name, step.state);
                        if let Some(r) = &step.reason {
                            let _ = write!(line, " {r}");
                        }
                        if let Some(code) = step.exit_code {
                            let _ = write!(line, " (exit {code})");
                        }
                        match (&step.started_at, &step.finished_at) {
                            (Some(s), Some(f)) => {
                                let _ = write!(line, " {s} → {f}");
                            }
                            (Some(s), None) => {
                                let _ = write!(line, " since {s}");
                            }
                            _ => {}
                        }
                        let _ = writeln!(out, "{line}");
                    }
                }
            }
        }
    }
    let _ = writeln!(out, "Events:");
    if events.is_empty() {
        let _ = writeln!(out, "  <none>");
    }
    let mut events: Vec<&Event> = events.iter().collect();
    events.sort_by_key(|e| {
        e.event_time
            .as_ref()
            .map(|t| t.0.to_string())
            .or_else(|| e.last_timestamp.as_ref().map(|t| t.0.to_string()))
            .unwrap_or_default()
    });
    for e in events {
        let _ = writeln!(
            out,
            "  {:<8}{:<24}{}",
            e.type_.as_deref().unwrap_or("Normal"),
            e.reason.as_deref().unwrap_or_default(),
            e.message.as_deref().unwrap_or_default()
        );
    }
    out
}

fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tekfed_api::logs::{StepStatus, TaskRunSteps};

    #[test]
    fn a_description_says_where_why_and_how_each_step_went() {
        let status: RunStatus = serde_json::from_value(serde_json::json!({
            "phase": "Failed", "cluster": "member-2", "scheduledTime": "2026-12-01T10:00:00Z",
            "conditions": [
                {"type": "Scheduled", "status": "True", "reason": "Scheduled", "lastTransitionTime": "2026-12-01T10:00:00Z",
                 "message": "scheduled to member-2 as the least loaded; candidates: member-2 (1 runs, chosen), member-1 (4 runs)"},
                {"type": "Succeeded", "status": "False", "reason": "Failed", "lastTransitionTime": "2026-12-01T10:01:00Z",
                 "message": "Tasks Completed: 1 (Failed: 1)"}],
            "attempts": [{"cluster": "member-1", "reason": "Drained", "time": "2026-12-01T09:59:00Z"}],
            "memberStatus": {"conditions": [{"type": "Succeeded", "status": "False", "reason": "Failed", "message": "Tasks Completed: 1 (Failed: 1)"}],
                             "results": [{"name": "digest", "value": "sha256:1"}]},
        }))
        .unwrap();
        let steps = vec![(
            "member-2".to_owned(),
            Ok(RunSteps {
                cluster: "member-2".into(),
                task_runs: vec![TaskRunSteps {
                    task: "build".into(),
                    task_run: "b-build".into(),
                    pod: "b-build-pod".into(),
                    phase: "Failed".into(),
                    steps: vec![StepStatus {
                        name: "compile".into(),
                        state: "Terminated".into(),
                        reason: Some("Error".into()),
                        exit_code: Some(2),
                        ..Default::default()
                    }],
                }],
            }),
        )];
        let text = render(RunKind::PipelineRun, "ci", "b", &status, &steps, &[]);
        for wanted in [
            "Phase:      Failed",
            "Cluster:    member-2",
            "candidates: member-2 (1 runs, chosen), member-1 (4 runs)",
            "off member-1 at 2026-12-01T09:59:00Z: Drained",
            "Member run on member-2:",
            "Results: digest=sha256:1",
            "build (b-build, pod b-build-pod): Failed",
            "compile         Terminated Error (exit 2)",
            "Events:\n  <none>",
        ] {
            assert!(text.contains(wanted), "{wanted:?} not in:\n{text}");
        }
        let queued: RunStatus = serde_json::from_value(serde_json::json!({
            "phase": "Queued",
            "conditions": [{"type": "Scheduled", "status": "False", "reason": "AllClustersFull",
                            "message": "every matching member cluster is at its maxConcurrentRuns", "lastTransitionTime": "2026-12-01T10:00:00Z"}],
        }))
        .unwrap();
        let text = render(RunKind::TaskRun, "ci", "t", &queued, &[], &[]);
        assert!(
            text.contains("Waiting:    AllClustersFull: every matching member cluster"),
            "{text}"
        );
        let unavailable = vec![(
            "member-1".to_owned(),
            Err("the hub serves no run logs".to_owned()),
        )];
        let text = render(RunKind::TaskRun, "ci", "t", &queued, &unavailable, &[]);
        assert!(
            text.contains("Task runs on member-1:\n  (not available: the hub serves no run logs)"),
            "{text}"
        );
    }
}
