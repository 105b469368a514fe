//! The object a member cluster gets: the federated object's template, with
//! that cluster's overrides applied (RFC 6902, the `json-patch` crate), as a
//! whole Tekton object with tekfed's ownership labels.
//!
//! Overrides apply to the template document `{metadata, spec}`. Only
//! `metadata.labels` and `metadata.annotations` reach the member: name and
//! namespace are the federated object's, and ownership labels always win.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tekfed_api::{ClusterOverrides, OverrideOp, OverrideOperation, Template};
use tekfed_runtime::connect::tekton_resource;

use crate::ownership::Owner;

/// An override that cannot be applied to the template for one cluster.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("override {index} ({op} {path}) for cluster {cluster} failed: {reason}")]
pub struct OverrideError {
    pub cluster: String,
    /// Position of the operation in that cluster's `clusterOverrides`.
    pub index: usize,
    pub op: &'static str,
    pub path: String,
    pub reason: String,
}

/// What to render: a Tekton kind, its federated owner, and its template.
pub struct Source<'a> {
    /// The Tekton kind on the member: `Task`, `Pipeline`, `StepAction`,
    /// `TaskRun`, `PipelineRun`.
    pub kind: &'a str,
    /// The member object's name (the federated object's, or one derived from it).
    pub name: &'a str,
    pub owner: Owner<'a>,
    pub template: &'a Template,
    pub overrides: &'a [ClusterOverrides],
}

/// The whole Tekton object for `cluster`, at the API version the member
/// serves its kind at ([`tekton_resource`]), ready to apply.
pub fn render(source: &Source<'_>, cluster: &str) -> Result<Value, OverrideError> {
    let mut doc = serde_json::to_value(source.template).unwrap_or_else(|_| json!({}));
    let ops = source
        .overrides
        .iter()
        .filter(|o| o.cluster_name == cluster)
        .flat_map(|o| o.cluster_overrides.iter());
    for (index, op) in ops.enumerate() {
        apply(&mut doc, op).map_err(|reason| OverrideError {
            cluster: cluster.to_owned(),
            index,
            op: op_name(op.op),
            path: op.path.clone(),
            reason,
        })?;
    }
    let string_map = |v: &Value| -> BTreeMap<String, String> {
        serde_json::from_value(v.clone()).unwrap_or_default()
    };
    let mut labels = string_map(&doc["metadata"]["labels"]);
    labels.extend(source.owner.labels());
    let annotations = string_map(&doc["metadata"]["annotations"]);
    let mut metadata = json!({
        "name": source.name,
        "namespace": source.owner.namespace,
        "labels": labels,
    });
    if !annotations.is_empty() {
        metadata["annotations"] = json!(annotations);
    }
    Ok(json!({
        "apiVersion": tekton_resource(source.kind).api_version,
        "kind": source.kind,
        "metadata": metadata,
        "spec": doc.get("spec").cloned().unwrap_or_else(|| json!({})),
    }))
}

fn op_name(op: OverrideOperation) -> &'static str {
    match op {
        OverrideOperation::Add => "add",
        OverrideOperation::Replace => "replace",
        OverrideOperation::Remove => "remove",
    }
}

fn apply(doc: &mut Value, op: &OverrideOp) -> Result<(), String> {
    let mut operation = json!({"op": op_name(op.op), "path": op.path});
    if op.op != OverrideOperation::Remove {
        // Admission refuses add/replace without a value; null is what a
        // client that skipped admission would mean.
        operation["value"] = op.value.clone().unwrap_or(Value::Null);
    }
    let patch: json_patch::Patch =
        serde_json::from_value(json!([operation])).map_err(|e| e.to_string())?;
    json_patch::patch(doc, &patch).map_err(|e| e.kind.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b6a2c1e-1111-4000-8000-000000000002";

    fn template() -> Template {
        serde_json::from_value(json!({
            "metadata": {"labels": {"team": "payments"}},
            "spec": {
                "params": [{"name": "greeting", "default": "hello"}],
                "steps": [{"name": "echo", "image": "ubuntu", "script": "echo $(params.greeting)"}],
            },
        }))
        .unwrap()
    }

    fn overrides() -> Vec<ClusterOverrides> {
        serde_json::from_value(json!([
            {"clusterName": "member-1", "clusterOverrides": [
                {"path": "/spec/steps/0/image", "value": "mirror.local/ubuntu"},
            ]},
            {"clusterName": "member-2", "clusterOverrides": [
                {"op": "replace", "path": "/spec/params/0/default", "value": "hej"},
                {"op": "add", "path": "/metadata/labels/region", "value": "eu"},
            ]},
            {"clusterName": "member-3", "clusterOverrides": [
                {"op": "remove", "path": "/spec/steps/0/script"},
                {"op": "replace", "path": "/spec/workspaces/0/name", "value": "x"},
            ]},
        ]))
        .unwrap()
    }

    fn source<'a>(template: &'a Template, overrides: &'a [ClusterOverrides]) -> Source<'a> {
        Source {
            kind: "Task",
            name: "echo",
            owner: Owner {
                kind: "FederatedTask",
                namespace: "ci",
                name: "echo",
                uid: UID,
            },
            template,
            overrides,
        }
    }

    #[test]
    fn each_cluster_gets_its_own_overrides_and_only_those() {
        let (t, o) = (template(), overrides());
        let one = render(&source(&t, &o), "member-1").unwrap();
        assert_eq!(one["spec"]["steps"][0]["image"], "mirror.local/ubuntu");
        assert_eq!(one["spec"]["params"][0]["default"], "hello");

        let two = render(&source(&t, &o), "member-2").unwrap();
        assert_eq!(two["spec"]["steps"][0]["image"], "ubuntu");
        assert_eq!(two["spec"]["params"][0]["default"], "hej");
        assert_eq!(two["metadata"]["labels"]["region"], "eu");

        let plain = render(&source(&t, &o), "member-9").unwrap();
        assert_eq!(plain["spec"], serde_json::to_value(&t.spec).unwrap());
    }

    #[test]
    fn the_member_object_is_a_whole_tekton_object_owned_by_tekfed() {
        let (t, o) = (template(), overrides());
        let object = render(&source(&t, &o), "member-1").unwrap();
        assert_eq!(object["apiVersion"], "tekton.dev/v1");
        assert_eq!(object["kind"], "Task");
        assert_eq!(object["metadata"]["name"], "echo");
        assert_eq!(object["metadata"]["namespace"], "ci");
        assert_eq!(object["metadata"]["labels"]["team"], "payments");
        assert_eq!(object["metadata"]["labels"]["tekfed.io/federated-uid"], UID);
    }

    #[test]
    fn a_step_action_is_rendered_at_v1beta1() {
        let t = template();
        let object = render(
            &Source {
                kind: "StepAction",
                ..source(&t, &[])
            },
            "member-1",
        )
        .unwrap();
        assert_eq!(object["apiVersion"], "tekton.dev/v1beta1");
        assert_eq!(object["kind"], "StepAction");
    }

    #[test]
    fn a_template_cannot_forge_ownership_labels() {
        let mut t = template();
        t.metadata
            .as_mut()
            .unwrap()
            .labels
            .insert("tekfed.io/federated-uid".into(), "someone-else".into());
        let object = render(&source(&t, &[]), "member-1").unwrap();
        assert_eq!(object["metadata"]["labels"]["tekfed.io/federated-uid"], UID);
    }

    #[test]
    fn a_failing_override_names_the_op_and_path() {
        let (t, o) = (template(), overrides());
        let err = render(&source(&t, &o), "member-3").unwrap_err();
        assert_eq!(err.cluster, "member-3");
        assert_eq!(err.index, 1);
        assert_eq!(err.op, "replace");
        assert_eq!(err.path, "/spec/workspaces/0/name");
        let message = err.to_string();
        assert!(
            message.contains("replace /spec/workspaces/0/name"),
            "{message}"
        );
        assert!(message.contains("member-3"), "{message}");
    }

    #[test]
    fn add_inserts_into_objects_and_lists() {
        let t = template();
        let o: Vec<ClusterOverrides> = serde_json::from_value(json!([
            {"clusterName": "member-1", "clusterOverrides": [
                {"op": "add", "path": "/spec/timeout", "value": "1h"},
                {"op": "add", "path": "/spec/steps/-", "value": {"name": "scan", "image": "trivy"}},
                {"op": "add", "path": "/spec/params/0", "value": {"name": "first"}},
                {"op": "remove", "path": "/spec/steps/0/script"},
            ]},
        ]))
        .unwrap();
        let object = render(&source(&t, &o), "member-1").unwrap();
        assert_eq!(object["spec"]["timeout"], "1h");
        assert_eq!(object["spec"]["steps"][1]["image"], "trivy");
        assert_eq!(object["spec"]["params"][0]["name"], "first");
        assert_eq!(object["spec"]["params"][1]["name"], "greeting");
        assert!(object["spec"]["steps"][0].get("script").is_none());
    }

    #[test]
    fn add_under_a_missing_parent_fails() {
        let t = template();
        let o: Vec<ClusterOverrides> = serde_json::from_value(json!([
            {"clusterName": "member-1", "clusterOverrides": [{"op": "add", "path": "/spec/workspaces/0", "value": {"name": "src"}}]},
        ]))
        .unwrap();
        let err = render(&source(&t, &o), "member-1").unwrap_err();
        assert_eq!(
            (err.op, err.path.as_str(), err.index),
            ("add", "/spec/workspaces/0", 0)
        );
    }

    #[test]
    fn an_index_that_is_not_a_number_fails_cleanly() {
        let t = template();
        let o: Vec<ClusterOverrides> = serde_json::from_value(json!([
            {"clusterName": "member-1", "clusterOverrides": [{"op": "replace", "path": "/spec/steps/x/image", "value": "y"}]},
        ]))
        .unwrap();
        let err = render(&source(&t, &o), "member-1").unwrap_err();
        assert_eq!(err.path, "/spec/steps/x/image");
    }

    #[test]
    fn entries_for_one_cluster_apply_in_order() {
        let t = template();
        let o: Vec<ClusterOverrides> = serde_json::from_value(json!([
            {"clusterName": "member-1", "clusterOverrides": [{"path": "/spec/steps/0/image", "value": "a"}]},
            {"clusterName": "member-1", "clusterOverrides": [{"path": "/spec/steps/0/image", "value": "b"}]},
        ]))
        .unwrap();
        let object = render(&source(&t, &o), "member-1").unwrap();
        assert_eq!(object["spec"]["steps"][0]["image"], "b");
    }

    #[test]
    fn removing_a_missing_path_fails_too() {
        let t = template();
        let o: Vec<ClusterOverrides> = serde_json::from_value(json!([
            {"clusterName": "member-1", "clusterOverrides": [{"op": "remove", "path": "/spec/timeout"}]},
        ]))
        .unwrap();
        let err = render(&source(&t, &o), "member-1").unwrap_err();
        assert_eq!((err.op, err.path.as_str()), ("remove", "/spec/timeout"));
    }
}
