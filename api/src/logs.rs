//! Run logs from the hub: the aggregated API the hub serves (group
//! [`GROUP`], registered by the `APIService` [`API_SERVICE`]) and what a
//! request for a run's log looks like. `kubectl tekfed logs` calls it; so
//! can anything else with hub credentials:
//!
//! ```text
//! kubectl get --raw '/apis/logs.tekfed.io/v1alpha1/namespaces/ci/federatedpipelineruns/build-42/log?follow=true'
//! ```
//!
//! The hub API server authorizes the request (`get` on
//! `federatedpipelineruns/log` in [`GROUP`]) before proxying it; the hub
//! then checks that the user may `get` the run itself in `tekfed.io`
//! (a SubjectAccessReview), so whoever cannot read a run cannot read its
//! logs.

use serde::{Deserialize, Serialize};

use crate::RunKind;

/// The aggregated API group the hub serves logs in.
pub const GROUP: &str = "logs.tekfed.io";
/// Its one version.
pub const VERSION: &str = "v1alpha1";
/// The `APIService` that registers it: `<version>.<group>`.
pub const API_SERVICE: &str = "v1alpha1.logs.tekfed.io";
/// The subresource, after the run's name.
pub const SUBRESOURCE: &str = "log";
/// The subresource with the run's TaskRuns and their steps' states, as
/// their pods on the member show them (`kubectl tekfed describe`).
pub const STEPS_SUBRESOURCE: &str = "steps";

/// What `…/steps` answers: the run's TaskRuns on one cluster, in
/// execution order, with their steps' states.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RunSteps {
    pub cluster: String,
    pub task_runs: Vec<TaskRunSteps>,
}

/// One TaskRun (one pod) of a run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TaskRunSteps {
    /// The pipeline task (PipelineRun) or the TaskRun's name.
    pub task: String,
    pub task_run: String,
    pub pod: String,
    /// The pod's phase (`Pending`, `Running`, `Succeeded`, `Failed`).
    pub phase: String,
    pub steps: Vec<StepStatus>,
}

/// One step, from its container's state.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StepStatus {
    pub name: String,
    /// `Waiting`, `Running` or `Terminated`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// The plural of the federated kind, as the log path names it.
pub fn plural(kind: RunKind) -> &'static str {
    match kind {
        RunKind::TaskRun => "federatedtaskruns",
        RunKind::PipelineRun => "federatedpipelineruns",
    }
}

/// The kind a plural names, if it is one of the two.
pub fn kind_of_plural(plural: &str) -> Option<RunKind> {
    match plural {
        "federatedtaskruns" => Some(RunKind::TaskRun),
        "federatedpipelineruns" => Some(RunKind::PipelineRun),
        _ => None,
    }
}

/// What to read of a run's log (the query string).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep streaming until the run finishes, including steps and child
    /// TaskRuns that start later.
    pub follow: bool,
    /// Only this task (a PipelineRun's pipeline task name).
    pub task: Option<String>,
    /// Only this step.
    pub step: Option<String>,
    /// For a `mode: All` run: which cluster's copy.
    pub cluster: Option<String>,
}

impl LogOptions {
    /// The query string (without `?`), values percent-encoded.
    pub fn query(&self) -> String {
        let mut parts = Vec::new();
        if self.follow {
            parts.push("follow=true".to_owned());
        }
        for (key, value) in [
            ("task", &self.task),
            ("step", &self.step),
            ("cluster", &self.cluster),
        ] {
            if let Some(v) = value {
                parts.push(format!("{key}={}", encode(v)));
            }
        }
        parts.join("&")
    }
}

/// The path of a run's steps on the hub API server, for `cluster` if given.
pub fn steps_path(kind: RunKind, namespace: &str, name: &str, cluster: Option<&str>) -> String {
    let mut path = format!(
        "/apis/{GROUP}/{VERSION}/namespaces/{}/{}/{}/{STEPS_SUBRESOURCE}",
        encode(namespace),
        plural(kind),
        encode(name)
    );
    if let Some(cluster) = cluster {
        path.push_str(&format!("?cluster={}", encode(cluster)));
    }
    path
}

/// The path of a run's log on the hub API server.
pub fn path(kind: RunKind, namespace: &str, name: &str, options: &LogOptions) -> String {
    let mut path = format!(
        "/apis/{GROUP}/{VERSION}/namespaces/{}/{}/{}/{SUBRESOURCE}",
        encode(namespace),
        plural(kind),
        encode(name)
    );
    let query = options.query();
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query);
    }
    path
}

/// Percent-encoding of everything but unreserved characters (RFC 3986).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_path_names_the_run_and_encodes_what_the_user_typed() {
        let options = LogOptions {
            follow: true,
            task: Some("build & test".into()),
            ..Default::default()
        };
        assert_eq!(
            path(RunKind::PipelineRun, "ci", "build-42", &options),
            "/apis/logs.tekfed.io/v1alpha1/namespaces/ci/federatedpipelineruns/build-42/log?follow=true&task=build%20%26%20test"
        );
        assert_eq!(
            path(RunKind::TaskRun, "ci", "t", &LogOptions::default()),
            "/apis/logs.tekfed.io/v1alpha1/namespaces/ci/federatedtaskruns/t/log"
        );
        for kind in [RunKind::TaskRun, RunKind::PipelineRun] {
            assert_eq!(kind_of_plural(plural(kind)), Some(kind));
        }
        assert_eq!(
            steps_path(RunKind::TaskRun, "ci", "t", Some("member-1")),
            "/apis/logs.tekfed.io/v1alpha1/namespaces/ci/federatedtaskruns/t/steps?cluster=member-1"
        );
        assert_eq!(kind_of_plural("pods"), None);
    }
}
