//! What a run refers to by name (`taskRef`, `pipelineRef`, the `taskRef`s
//! of a Pipeline), and putting it on the run's cluster before the run: a
//! `FederatedTask` or `FederatedPipeline` of that name is copied there
//! ([`crate::templates::copies`]), or the member must already have it.

use std::collections::BTreeSet;

use kube::ResourceExt;
use kube::api::{Api, DynamicObject};
use tekfed_api::{FederatedPipeline, FederatedTask, PropagationState, RunKind};
use tekfed_runtime::connect::tekton_resource;

use super::{Error, FederatedRun, RunContext};
use crate::errors::one_line;
use crate::templates::copies::sync_cluster;

/// The Tasks and Pipelines a run's spec refers to by name: `(kind, name)`.
/// Inline `taskSpec`/`pipelineSpec` need nothing, but the `taskRef`s inside
/// an inline `pipelineSpec` do. Refs through a resolver are not tekfed's.
pub fn references(
    kind: RunKind,
    spec: &serde_json::Map<String, serde_json::Value>,
) -> Vec<(&'static str, String)> {
    let by_name = |r: &serde_json::Value, want: &str| -> Option<String> {
        let kind_ok = r
            .get("kind")
            .and_then(|k| k.as_str())
            .is_none_or(|k| k == want);
        (kind_ok && r.get("resolver").is_none())
            .then(|| r.get("name")?.as_str().map(str::to_owned))
            .flatten()
    };
    let mut refs = Vec::new();
    match kind {
        RunKind::TaskRun => {
            if let Some(name) = spec.get("taskRef").and_then(|r| by_name(r, "Task")) {
                refs.push(("Task", name));
            }
        }
        RunKind::PipelineRun => {
            if let Some(name) = spec.get("pipelineRef").and_then(|r| by_name(r, "Pipeline")) {
                refs.push(("Pipeline", name));
            }
            if let Some(inline) = spec.get("pipelineSpec").and_then(|p| p.as_object()) {
                refs.extend(pipeline_task_refs(inline).into_iter().map(|n| ("Task", n)));
            }
        }
    }
    refs
}

/// The Tasks a Pipeline spec's tasks and finally tasks refer to by name.
pub fn pipeline_task_refs(spec: &serde_json::Map<String, serde_json::Value>) -> Vec<String> {
    let mut names: Vec<String> = ["tasks", "finally"]
        .iter()
        .filter_map(|k| spec.get(*k)?.as_array())
        .flatten()
        .filter_map(|t| {
            let r = t.get("taskRef")?;
            let kind_ok = r
                .get("kind")
                .and_then(|k| k.as_str())
                .is_none_or(|k| k == "Task");
            (kind_ok && r.get("resolver").is_none())
                .then(|| r.get("name")?.as_str().map(str::to_owned))
                .flatten()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Put what `run` refers to on `cluster` before the run: a FederatedTask or
/// FederatedPipeline of that name in the run's namespace is applied there
/// (with that cluster's overrides); otherwise the member must already have
/// it. What exists nowhere is `DependencyMissing`.
pub(super) async fn ensure_dependencies<K: FederatedRun>(
    run: &K,
    cluster: &str,
    ctx: &RunContext,
) -> Result<(), Error> {
    let ns = run.namespace().unwrap_or_default();
    let mut tasks = BTreeSet::new();
    let mut missing = Vec::new();
    let mut failed = Vec::new();
    let on_member = |kind: &'static str, name: String| {
        let members = ctx.members.clone();
        let (ns, cluster) = (ns.clone(), cluster.to_owned());
        async move {
            let conn = members.connection(&cluster).ok()?;
            let api: Api<DynamicObject> =
                Api::namespaced_with(conn.client.clone(), &ns, &tekton_resource(kind));
            api.get_metadata_opt(&name).await.ok().flatten().map(|_| ())
        }
    };
    for (kind, name) in references(K::KIND, &run.template().spec) {
        if kind == "Task" {
            tasks.insert(name);
            continue;
        }
        let pipelines: Api<FederatedPipeline> = Api::namespaced(ctx.hub.clone(), &ns);
        match pipelines.get_opt(&name).await {
            Ok(Some(fp)) => {
                tasks.extend(pipeline_task_refs(&fp.spec.template.spec));
                if let (state, Some(message)) = sync_cluster(&fp, cluster, &ctx.members, true).await
                    && state != PropagationState::Synced
                {
                    failed.push(format!("Pipeline {name}: {message}"));
                }
            }
            Ok(None) if on_member("Pipeline", name.clone()).await.is_some() => {}
            Ok(None) => missing.push(format!("pipelineRef {name}: no FederatedPipeline {name} in {ns} and no Pipeline {name} on {cluster}")),
            Err(e) => failed.push(format!("reading FederatedPipeline {name}: {}", one_line(&e))),
        }
    }
    let federated_tasks: Api<FederatedTask> = Api::namespaced(ctx.hub.clone(), &ns);
    for name in tasks {
        match federated_tasks.get_opt(&name).await {
            Ok(Some(ft)) => {
                if let (state, Some(message)) = sync_cluster(&ft, cluster, &ctx.members, true).await
                    && state != PropagationState::Synced
                {
                    failed.push(format!("Task {name}: {message}"));
                }
            }
            Ok(None) if on_member("Task", name.clone()).await.is_some() => {}
            Ok(None) => missing.push(format!(
                "taskRef {name}: no FederatedTask {name} in {ns} and no Task {name} on {cluster}"
            )),
            Err(e) => failed.push(format!("reading FederatedTask {name}: {}", one_line(&e))),
        }
    }
    if !missing.is_empty() {
        return Err(Error::DependencyMissing(missing.join("; ")));
    }
    if !failed.is_empty() {
        return Err(Error::Waiting {
            reason: "DependencyNotReady",
            kind: K::FEDERATED_KIND,
            namespace: ns,
            name: run.name_any(),
            message: format!("dependencies not on {cluster} yet: {}", failed.join("; ")),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_task_run_needs_its_task_ref() {
        assert_eq!(
            references(
                RunKind::TaskRun,
                &spec(json!({"taskRef": {"name": "build"}}))
            ),
            vec![("Task", "build".to_string())]
        );
        assert!(references(RunKind::TaskRun, &spec(json!({"taskSpec": {"steps": []}}))).is_empty());
        // Resolved remotely, or another kind: not tekfed's to place.
        assert!(
            references(
                RunKind::TaskRun,
                &spec(json!({"taskRef": {"resolver": "git", "params": []}}))
            )
            .is_empty()
        );
        assert!(
            references(
                RunKind::TaskRun,
                &spec(json!({"taskRef": {"name": "x", "kind": "ClusterTask"}}))
            )
            .is_empty()
        );
    }

    #[test]
    fn a_pipeline_run_needs_its_pipeline_and_the_tasks_of_an_inline_pipeline() {
        assert_eq!(
            references(
                RunKind::PipelineRun,
                &spec(json!({"pipelineRef": {"name": "build-and-deploy"}}))
            ),
            vec![("Pipeline", "build-and-deploy".to_string())]
        );
        let inline = spec(json!({"pipelineSpec": {
            "tasks": [{"name": "a", "taskRef": {"name": "build"}}, {"name": "b", "taskSpec": {"steps": []}}, {"name": "c", "taskRef": {"name": "build"}}],
            "finally": [{"name": "d", "taskRef": {"name": "notify"}}],
        }}));
        assert_eq!(
            references(RunKind::PipelineRun, &inline),
            vec![
                ("Task", "build".to_string()),
                ("Task", "notify".to_string())
            ]
        );
    }
}
