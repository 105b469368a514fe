//! The pure half of native runs: the `Federated*Run` that carries a native
//! Tekton run through the hub (its "shadow": same name and namespace,
//! owned by the native run), and the native run's Tekton status made from
//! the shadow's.

use serde_json::{Map, Value, json};
use tekfed_api::native::{
    ANNOTATION_ON_CLUSTER_LOST, ANNOTATION_OVERRIDES, ANNOTATION_PLACEMENT, LABEL_MIRROR_OF,
    LABEL_NATIVE, MANAGED_BY_HUB,
};
use tekfed_api::tekton::cancel_values;
use tekfed_api::{ClusterOverrides, OnClusterLost, RunKind, RunPhase, RunPlacement, RunStatus};

/// Annotations that are tekfed's instructions or a client's bookkeeping,
/// not for the member run.
const NOT_CARRIED: [&str; 4] = [
    ANNOTATION_PLACEMENT,
    ANNOTATION_OVERRIDES,
    ANNOTATION_ON_CLUSTER_LOST,
    "kubectl.kubernetes.io/last-applied-configuration",
];

/// Why a native run cannot be federated, for its status.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

/// The shadow `Federated*Run` of a native run (`tekton.dev/v1` JSON).
pub fn shadow(kind: RunKind, native: &Value) -> Result<Value, Refusal> {
    let metadata = &native["metadata"];
    let annotations = metadata["annotations"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let annotation = |key: &str| annotations.get(key).and_then(Value::as_str);
    let invalid = |key: &str, what: &str, e: serde_json::Error| Refusal {
        reason: "InvalidAnnotation",
        message: format!("annotation {key} is not {what}: {e}"),
    };
    let placement: RunPlacement = match annotation(ANNOTATION_PLACEMENT) {
        Some(text) => serde_json::from_str(text)
            .map_err(|e| invalid(ANNOTATION_PLACEMENT, "a JSON placement", e))?,
        // Any member.
        None => RunPlacement {
            cluster_selector: Some(Default::default()),
            ..Default::default()
        },
    };
    let overrides: Vec<ClusterOverrides> = match annotation(ANNOTATION_OVERRIDES) {
        Some(text) => serde_json::from_str(text)
            .map_err(|e| invalid(ANNOTATION_OVERRIDES, "a JSON list of cluster overrides", e))?,
        None => Vec::new(),
    };
    let on_cluster_lost = match annotation(ANNOTATION_ON_CLUSTER_LOST) {
        None | Some("Fail") => OnClusterLost::Fail,
        Some("Reschedule") => OnClusterLost::Reschedule,
        Some(other) => {
            return Err(Refusal {
                reason: "InvalidAnnotation",
                message: format!(
                    "annotation {ANNOTATION_ON_CLUSTER_LOST} is {other:?}: use Fail or Reschedule"
                ),
            });
        }
    };
    let mut spec = native["spec"].as_object().cloned().unwrap_or_default();
    // The member's Tekton must run it.
    spec.remove("managedBy");
    let carried: Map<String, Value> = annotations
        .into_iter()
        .filter(|(k, _)| !NOT_CARRIED.contains(&k.as_str()))
        .collect();
    let labels = metadata["labels"].as_object().cloned().unwrap_or_default();
    Ok(json!({
        "apiVersion": format!("{}/{}", tekfed_api::GROUP, tekfed_api::VERSION),
        "kind": kind.federated_kind(),
        "metadata": {
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "labels": {LABEL_NATIVE: kind.tekton_kind()},
            "ownerReferences": [{
                "apiVersion": native["apiVersion"], "kind": kind.tekton_kind(),
                "name": metadata["name"], "uid": metadata["uid"],
                "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "spec": {
            "template": {"metadata": {"labels": labels, "annotations": carried}, "spec": spec},
            "placement": placement,
            "overrides": overrides,
            "onClusterLost": on_cluster_lost,
        },
    }))
}

/// The cancel a user asked for on the native run, if any.
pub fn cancel(kind: RunKind, native: &Value) -> Option<&str> {
    native["spec"]["status"]
        .as_str()
        .filter(|s| cancel_values(kind).contains(s))
}

/// The native run's `status`: the member's Tekton status once there is
/// one, else a `Succeeded` condition saying where tekfed has it (`tkn`
/// lists the first condition; `Unknown` keeps it cancellable). A
/// PipelineRun's `childReferences` keep only the TaskRuns mirrored on the
/// hub (`mirrored`): `tkn pipelinerun describe` fails on a child it
/// cannot get.
pub fn native_status(kind: RunKind, shadow: &RunStatus, mirrored: &[String]) -> Value {
    let tekfed_final = shadow.phase.filter(|p| tekfed_api::tekton::is_final(*p));
    let member = shadow
        .member_status
        .as_ref()
        .and_then(Value::as_object)
        .filter(|m| !m.is_empty())
        .cloned();
    let member_final = member.as_ref().is_some_and(|m| {
        tekfed_api::tekton::is_final(tekfed_api::tekton::phase(&Value::Object(m.clone())))
    });
    let mut status = match member {
        // The member's word, unless tekfed ended the run itself (cluster
        // lost, refused) while the member's copy said otherwise.
        Some(m) if member_final || tekfed_final.is_none() => m,
        _ => {
            let mut s = Map::new();
            s.insert("conditions".into(), json!([condition(kind, shadow)]));
            if let Some(t) = &shadow.start_time {
                s.insert("startTime".into(), json!(t));
            }
            if let Some(t) = &shadow.completion_time {
                s.insert("completionTime".into(), json!(t));
            }
            s
        }
    };
    if kind == RunKind::PipelineRun
        && let Some(Value::Array(children)) = status.remove("childReferences")
    {
        let kept: Vec<Value> = children
            .into_iter()
            .filter(|c| {
                c["kind"] == "TaskRun"
                    && c["name"]
                        .as_str()
                        .is_some_and(|n| mirrored.iter().any(|m| m == n))
            })
            .collect();
        if !kept.is_empty() {
            status.insert("childReferences".into(), Value::Array(kept));
        }
    }
    if kind == RunKind::TaskRun && !status.contains_key("podName") {
        // Required by Tekton's schema; the pod is on the member.
        status.insert("podName".into(), json!(""));
    }
    Value::Object(status)
}

/// Tekton's `Succeeded` condition for where tekfed has the run.
fn condition(kind: RunKind, shadow: &RunStatus) -> Value {
    let find = |t: &str| shadow.conditions.iter().find(|c| c.type_ == t);
    let (status, reason, message, time) = match shadow.phase.unwrap_or_default() {
        RunPhase::Queued => {
            let c = find("Scheduled");
            let why = c
                .map(|c| format!("{}: {}", c.reason, c.message))
                .unwrap_or_default();
            (
                "Unknown",
                "Queued".to_owned(),
                format!("waiting for a member cluster: {why}"),
                c,
            )
        }
        RunPhase::Scheduled => {
            let c = find("Scheduled");
            let message = c.map(|c| c.message.clone()).unwrap_or_default();
            ("Unknown", "Scheduled".to_owned(), message, c)
        }
        RunPhase::Running => (
            "Unknown",
            "Running".to_owned(),
            String::new(),
            find("Scheduled"),
        ),
        RunPhase::Succeeded => {
            let c = find("Succeeded");
            (
                "True",
                "Succeeded".to_owned(),
                c.map(|c| c.message.clone()).unwrap_or_default(),
                c,
            )
        }
        RunPhase::Failed => {
            let c = find("Succeeded");
            let reason = c
                .map(|c| c.reason.clone())
                .unwrap_or_else(|| "Failed".into());
            (
                "False",
                reason,
                c.map(|c| c.message.clone()).unwrap_or_default(),
                c,
            )
        }
        RunPhase::Cancelled => {
            let c = find("Succeeded");
            let reason = match kind {
                RunKind::TaskRun => "TaskRunCancelled",
                RunKind::PipelineRun => "Cancelled",
            };
            (
                "False",
                reason.to_owned(),
                c.map(|c| c.message.clone()).unwrap_or_default(),
                c,
            )
        }
    };
    let mut condition =
        json!({"type": "Succeeded", "status": status, "reason": reason, "message": message});
    if let Some(c) = time {
        condition["lastTransitionTime"] = json!(c.last_transition_time);
    }
    condition
}

/// The hub TaskRun that mirrors `member_task_run`, a child of the native
/// PipelineRun `native` on its member: the member's spec, labels and
/// status, managed by the hub (a Tekton controller on the hub leaves it
/// alone), labelled [`LABEL_MIRROR_OF`], owned by the PipelineRun but not
/// as its controller (Tekton's PipelineRun controller wakes the controller
/// of a TaskRun that changes).
pub fn child(native: &Value, member_task_run: &Value) -> Value {
    let mut labels = member_task_run["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    labels.insert(LABEL_MIRROR_OF.into(), native["metadata"]["name"].clone());
    // tekfed's labels on the member belong to the member's copy.
    labels.retain(|k, _| !k.starts_with("tekfed.io/") || k == LABEL_MIRROR_OF);
    let mut spec = member_task_run["spec"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    spec.insert("managedBy".into(), json!(MANAGED_BY_HUB));
    let mut status = member_task_run["status"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    if !status.contains_key("podName") {
        status.insert("podName".into(), json!(""));
    }
    json!({
        "apiVersion": "tekton.dev/v1", "kind": "TaskRun",
        "metadata": {
            "name": member_task_run["metadata"]["name"],
            "namespace": native["metadata"]["namespace"],
            "labels": labels,
            "ownerReferences": [{
                "apiVersion": native["apiVersion"], "kind": "PipelineRun",
                "name": native["metadata"]["name"], "uid": native["metadata"]["uid"],
                "controller": false, "blockOwnerDeletion": false,
            }],
        },
        "spec": spec,
        "status": status,
    })
}

/// The JSON merge patch that makes a run's status `new` (`None` when it
/// already is): `new` whole, and `null` for each top-level field it no
/// longer has.
pub fn status_patch(old: Option<&Value>, new: Value) -> Option<Value> {
    if old == Some(&new) {
        return None;
    }
    let mut status = new.as_object().cloned().unwrap_or_default();
    for key in old
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|o| o.keys())
    {
        status.entry(key.clone()).or_insert(Value::Null);
    }
    Some(json!({"status": status}))
}

/// A refusal as the native run's status: failed, with the reason.
pub fn refused_status(kind: RunKind, refusal: &Refusal) -> Value {
    let mut status = json!({"conditions": [{
        "type": "Succeeded", "status": "False",
        "reason": refusal.reason, "message": refusal.message,
    }]});
    if kind == RunKind::TaskRun {
        status["podName"] = json!("");
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native(annotations: Value) -> Value {
        json!({
            "apiVersion": "tekton.dev/v1", "kind": "PipelineRun",
            "metadata": {"name": "build-1", "namespace": "ci", "uid": "u-1",
                         "labels": {"team": "a"}, "annotations": annotations},
            "spec": {"managedBy": "tekfed.io/hub", "pipelineRef": {"name": "build"}},
        })
    }

    #[test]
    fn the_shadow_carries_the_run_without_its_manager_and_with_its_placement() {
        let placement = r#"{"clusters": [{"name": "member-2"}]}"#;
        let shadow = shadow(
            RunKind::PipelineRun,
            &native(json!({ANNOTATION_PLACEMENT: placement, "note": "kept", ANNOTATION_ON_CLUSTER_LOST: "Reschedule"})),
        )
        .unwrap();
        assert_eq!(shadow["kind"], "FederatedPipelineRun");
        assert_eq!(shadow["metadata"]["name"], "build-1");
        assert_eq!(shadow["metadata"]["labels"][LABEL_NATIVE], "PipelineRun");
        assert_eq!(shadow["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(
            shadow["spec"]["template"]["spec"],
            json!({"pipelineRef": {"name": "build"}})
        );
        assert_eq!(
            shadow["spec"]["template"]["metadata"]["annotations"],
            json!({"note": "kept"})
        );
        assert_eq!(
            shadow["spec"]["template"]["metadata"]["labels"],
            json!({"team": "a"})
        );
        assert_eq!(
            shadow["spec"]["placement"]["clusters"][0]["name"],
            "member-2"
        );
        assert_eq!(shadow["spec"]["onClusterLost"], "Reschedule");
        // No placement: any member.
        let anywhere = super::shadow(RunKind::PipelineRun, &native(json!({}))).unwrap();
        assert_eq!(anywhere["spec"]["placement"]["clusterSelector"], json!({}));
    }

    #[test]
    fn a_bad_annotation_is_refused_naming_it() {
        let bad = shadow(
            RunKind::TaskRun,
            &native(json!({ANNOTATION_PLACEMENT: "{nope"})),
        )
        .unwrap_err();
        assert_eq!(bad.reason, "InvalidAnnotation");
        assert!(
            bad.message.contains(ANNOTATION_PLACEMENT),
            "{}",
            bad.message
        );
        let bad = shadow(
            RunKind::TaskRun,
            &native(json!({ANNOTATION_ON_CLUSTER_LOST: "Never"})),
        )
        .unwrap_err();
        assert!(
            bad.message.contains("Fail or Reschedule"),
            "{}",
            bad.message
        );
        let status = refused_status(RunKind::TaskRun, &bad);
        assert_eq!(status["conditions"][0]["status"], "False");
        assert_eq!(status["podName"], "");
    }

    #[test]
    fn the_native_status_is_the_member_s_once_there_is_one() {
        let queued: RunStatus = serde_json::from_value(json!({
            "phase": "Queued",
            "conditions": [{"type": "Scheduled", "status": "False", "reason": "AllClustersFull",
                            "message": "every matching member cluster is full", "lastTransitionTime": "2026-12-01T10:00:00Z"}],
        }))
        .unwrap();
        let status = native_status(RunKind::TaskRun, &queued, &[]);
        assert_eq!(
            status["conditions"][0]["status"], "Unknown",
            "cancellable while queued"
        );
        assert_eq!(status["conditions"][0]["reason"], "Queued");
        assert!(
            status["conditions"][0]["message"]
                .as_str()
                .unwrap()
                .contains("AllClustersFull")
        );
        assert_eq!(status["podName"], "");

        let member = json!({
            "conditions": [{"type": "Succeeded", "status": "True", "reason": "Succeeded"}],
            "startTime": "2026-12-01T10:00:01Z", "completionTime": "2026-12-01T10:00:09Z",
            "results": [{"name": "digest", "value": "sha256:1"}],
            "childReferences": [{"name": "build-1-compile", "kind": "TaskRun", "pipelineTaskName": "compile"}],
        });
        let done = RunStatus {
            phase: Some(RunPhase::Succeeded),
            member_status: Some(member.clone()),
            ..Default::default()
        };
        let status = native_status(RunKind::PipelineRun, &done, &[]);
        assert_eq!(status["results"], member["results"]);
        assert_eq!(status["startTime"], member["startTime"]);
        assert!(
            status.get("childReferences").is_none(),
            "no TaskRun mirrored on the hub yet"
        );
        let status = native_status(RunKind::PipelineRun, &done, &["build-1-compile".into()]);
        assert_eq!(status["childReferences"], member["childReferences"]);

        // tekfed ended it (its cluster was lost) while the member's copy ran.
        let lost: RunStatus = serde_json::from_value(json!({
            "phase": "Failed",
            "memberStatus": {"conditions": [{"type": "Succeeded", "status": "Unknown", "reason": "Running"}]},
            "conditions": [{"type": "Succeeded", "status": "False", "reason": "ClusterLost",
                            "message": "member-1 was lost", "lastTransitionTime": "2026-12-01T10:00:00Z"}],
        }))
        .unwrap();
        let status = native_status(RunKind::PipelineRun, &lost, &[]);
        assert_eq!(status["conditions"][0]["reason"], "ClusterLost");
        assert_eq!(status["conditions"][0]["status"], "False");
    }

    #[test]
    fn a_child_task_run_is_mirrored_with_the_member_s_status_and_managed_by_the_hub() {
        let member = json!({
            "metadata": {"name": "build-1-compile", "namespace": "ci",
                         "labels": {"tekton.dev/pipelineRun": "build-1", "tekton.dev/pipelineTask": "compile",
                                    "tekfed.io/uid": "x"}},
            "spec": {"taskSpec": {"steps": [{"name": "make"}]}, "serviceAccountName": "default"},
            "status": {"podName": "build-1-compile-pod", "conditions": [{"type": "Succeeded", "status": "True"}]},
        });
        let mirror = child(&native(json!({})), &member);
        assert_eq!(mirror["metadata"]["name"], "build-1-compile");
        assert_eq!(
            mirror["metadata"]["labels"]["tekton.dev/pipelineTask"],
            "compile"
        );
        assert_eq!(mirror["metadata"]["labels"][LABEL_MIRROR_OF], "build-1");
        assert!(mirror["metadata"]["labels"].get("tekfed.io/uid").is_none());
        assert_eq!(
            mirror["metadata"]["ownerReferences"][0]["controller"],
            false
        );
        assert_eq!(mirror["spec"]["managedBy"], MANAGED_BY_HUB);
        assert_eq!(mirror["status"], member["status"]);
    }

    #[test]
    fn a_status_patch_replaces_the_status_and_is_skipped_when_nothing_changed() {
        let old =
            json!({"conditions": [{"type": "Succeeded", "status": "Unknown"}], "podName": ""});
        assert_eq!(status_patch(Some(&old), old.clone()), None);
        let new =
            json!({"conditions": [{"type": "Succeeded", "status": "True"}], "startTime": "t"});
        assert_eq!(
            status_patch(Some(&old), new),
            Some(
                json!({"status": {"conditions": [{"type": "Succeeded", "status": "True"}],
                                   "startTime": "t", "podName": null}})
            )
        );
        assert!(status_patch(None, json!({})).is_some());
    }

    #[test]
    fn a_cancel_is_read_from_the_native_spec() {
        let mut run = native(json!({}));
        assert_eq!(cancel(RunKind::PipelineRun, &run), None);
        run["spec"]["status"] = json!("Cancelled");
        assert_eq!(cancel(RunKind::PipelineRun, &run), Some("Cancelled"));
        run["spec"]["status"] = json!("PipelineRunPending");
        assert_eq!(cancel(RunKind::PipelineRun, &run), None);
    }
}
