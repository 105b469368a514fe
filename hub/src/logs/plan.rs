//! What to read next of a run's log, decided from its pods as the member
//! shows them (pure: the server lists the pods, asks, reads, asks again).
//!
//! Order is execution order as `tkn` prints it: pods (one per TaskRun) by
//! creation, and in each pod its step containers (`step-<name>`) in the
//! order Tekton runs them. A step that has not started yet is waited for
//! when following, unless it never will (its pod or the run is over).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use tekfed_api::RunKind;
use tekfed_api::logs::{RunSteps, StepStatus, TaskRunSteps};

/// Tekton's pod label naming a PipelineRun's task.
const LABEL_PIPELINE_TASK: &str = "tekton.dev/pipelineTask";
/// Tekton's pod label naming the TaskRun.
const LABEL_TASK_RUN: &str = "tekton.dev/taskRun";
/// Tekton names a step's container `step-<step name>`.
const STEP_PREFIX: &str = "step-";

/// The label selector of a run's pods on its member (the member run has
/// the federated run's name).
pub fn pod_selector(kind: RunKind, run: &str) -> String {
    match kind {
        RunKind::TaskRun => format!("{LABEL_TASK_RUN}={run}"),
        RunKind::PipelineRun => format!("tekton.dev/pipelineRun={run}"),
    }
}

/// Where a step's container stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepState {
    Waiting,
    Running,
    Terminated,
}

impl StepState {
    /// As `…/steps` reports it (`StepStatus.state`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "Waiting",
            Self::Running => "Running",
            Self::Terminated => "Terminated",
        }
    }
}

/// One step of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepView {
    pub container: String,
    pub step: String,
    pub state: StepState,
}

/// One pod of the run, as far as its log is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    /// RFC 3339 creation time (sorts as time).
    pub created: String,
    /// The pipeline task (PipelineRun) or TaskRun name.
    pub task: String,
    /// The pod will run nothing more (`Succeeded` or `Failed`).
    pub finished: bool,
    pub steps: Vec<StepView>,
}

impl PodView {
    pub fn from_pod(pod: &Pod) -> Self {
        let labels = pod.labels();
        let task = labels
            .get(LABEL_PIPELINE_TASK)
            .or_else(|| labels.get(LABEL_TASK_RUN))
            .cloned()
            .unwrap_or_default();
        let status = pod.status.as_ref();
        let finished = status
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        let statuses = status
            .and_then(|s| s.container_statuses.as_ref())
            .cloned()
            .unwrap_or_default();
        let steps = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .filter_map(|c| {
                let step = c.name.strip_prefix(STEP_PREFIX)?;
                let state = statuses
                    .iter()
                    .find(|s| s.name == c.name)
                    .and_then(|s| s.state.as_ref())
                    .map(|s| {
                        if s.terminated.is_some() {
                            StepState::Terminated
                        } else if s.running.is_some() {
                            StepState::Running
                        } else {
                            StepState::Waiting
                        }
                    })
                    .unwrap_or(StepState::Waiting);
                Some(StepView {
                    container: c.name.clone(),
                    step: step.to_owned(),
                    state,
                })
            })
            .collect();
        PodView {
            name: pod.name_any(),
            created: pod
                .creation_timestamp()
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
            task,
            finished,
            steps,
        }
    }
}

/// Which task and step to read (`--task`, `--step`).
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub task: Option<String>,
    pub step: Option<String>,
}

/// One container's log to read now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    pub pod: String,
    pub container: String,
    /// Put before each line: `[task : step] ` (PipelineRun) or `[step] `
    /// (TaskRun), as `tkn` does.
    pub prefix: String,
    /// Stream until the container ends (it is running and we follow).
    pub follow: bool,
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    Read(Read),
    /// Something not started yet (or not created yet) will be: look again.
    Wait,
    Done,
}

/// The next thing to do, given the pods, the containers already read
/// (`(pod, container)`), and whether the run is over.
pub fn next(
    kind: RunKind,
    pods: &[PodView],
    done: &BTreeSet<(String, String)>,
    filter: &Filter,
    follow: bool,
    run_finished: bool,
) -> Next {
    let mut pods: Vec<&PodView> = pods
        .iter()
        .filter(|p| filter.task.as_ref().is_none_or(|t| *t == p.task))
        .collect();
    pods.sort_by(|a, b| (&a.created, &a.name).cmp(&(&b.created, &b.name)));
    for pod in pods {
        for step in pod
            .steps
            .iter()
            .filter(|s| filter.step.as_ref().is_none_or(|f| *f == s.step))
        {
            if done.contains(&(pod.name.clone(), step.container.clone())) {
                continue;
            }
            match step.state {
                StepState::Running | StepState::Terminated => {
                    let prefix = match kind {
                        RunKind::TaskRun => format!("[{}] ", step.step),
                        RunKind::PipelineRun => format!("[{} : {}] ", pod.task, step.step),
                    };
                    return Next::Read(Read {
                        pod: pod.name.clone(),
                        container: step.container.clone(),
                        prefix,
                        follow: follow && step.state == StepState::Running,
                    });
                }
                StepState::Waiting if follow && !run_finished && !pod.finished => {
                    return Next::Wait;
                }
                // It never started and never will (or we do not follow).
                StepState::Waiting => {}
            }
        }
    }
    if follow && !run_finished {
        // More TaskRuns of a PipelineRun may come.
        Next::Wait
    } else {
        Next::Done
    }
}

/// The run's TaskRuns on `cluster` and their steps' states, from their
/// pods, in execution order (`kubectl tekfed describe`).
pub fn run_steps(cluster: &str, pods: &[Pod]) -> RunSteps {
    let mut pods: Vec<&Pod> = pods.iter().collect();
    let created = |p: &Pod| {
        p.creation_timestamp()
            .map(|t| t.0.to_string())
            .unwrap_or_default()
    };
    pods.sort_by_key(|p| (created(p), p.name_any()));
    let task_runs = pods
        .into_iter()
        .map(|pod| {
            let view = PodView::from_pod(pod);
            let statuses = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.clone())
                .unwrap_or_default();
            let steps = view
                .steps
                .iter()
                .map(|step| {
                    let state = statuses
                        .iter()
                        .find(|s| s.name == step.container)
                        .and_then(|s| s.state.clone())
                        .unwrap_or_default();
                    let mut out = StepStatus {
                        name: step.step.clone(),
                        state: step.state.as_str().to_owned(),
                        ..Default::default()
                    };
                    if let Some(t) = state.terminated {
                        out.reason = t.reason;
                        out.exit_code = Some(t.exit_code);
                        out.started_at = t.started_at.map(|t| t.0.to_string());
                        out.finished_at = t.finished_at.map(|t| t.0.to_string());
                    } else if let Some(r) = state.running {
                        out.started_at = r.started_at.map(|t| t.0.to_string());
                    } else if let Some(w) = state.waiting {
                        out.reason = w.reason;
                    }
                    out
                })
                .collect();
            TaskRunSteps {
                task: view.task.clone(),
                task_run: pod
                    .labels()
                    .get(LABEL_TASK_RUN)
                    .cloned()
                    .unwrap_or_default(),
                pod: view.name.clone(),
                phase: pod
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_else(|| "Pending".into()),
                steps,
            }
        })
        .collect();
    RunSteps {
        cluster: cluster.to_owned(),
        task_runs,
    }
}

/// Split `buffer` into complete lines, each given `prefix`; what follows
/// the last newline stays in `buffer` for the next chunk.
pub fn prefix_lines(prefix: &str, buffer: &mut Vec<u8>, out: &mut Vec<u8>) {
    let Some(last) = buffer.iter().rposition(|b| *b == b'\n') else {
        return;
    };
    let rest = buffer.split_off(last + 1);
    for line in buffer.split_inclusive(|b| *b == b'\n') {
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(line);
    }
    *buffer = rest;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, state: StepState) -> StepView {
        StepView {
            container: format!("step-{name}"),
            step: name.into(),
            state,
        }
    }

    fn pod(name: &str, created: &str, task: &str, steps: Vec<StepView>) -> PodView {
        PodView {
            name: name.into(),
            created: created.into(),
            task: task.into(),
            finished: false,
            steps,
        }
    }

    fn read_all(
        kind: RunKind,
        pods: &[PodView],
        filter: &Filter,
        follow: bool,
        finished: bool,
    ) -> (Vec<String>, Next) {
        let mut done = BTreeSet::new();
        let mut prefixes = Vec::new();
        loop {
            match next(kind, pods, &done, filter, follow, finished) {
                Next::Read(r) => {
                    prefixes.push(r.prefix.clone());
                    done.insert((r.pod, r.container));
                }
                other => return (prefixes, other),
            }
        }
    }

    #[test]
    fn steps_are_read_in_execution_order_and_prefixed_as_tkn_does() {
        use StepState::*;
        let pods = vec![
            pod(
                "p-test",
                "2026-01-01T00:00:02Z",
                "test",
                vec![step("unit", Terminated)],
            ),
            pod(
                "p-build",
                "2026-01-01T00:00:01Z",
                "build",
                vec![step("fetch", Terminated), step("compile", Terminated)],
            ),
        ];
        let (prefixes, next) =
            read_all(RunKind::PipelineRun, &pods, &Filter::default(), false, true);
        assert_eq!(
            prefixes,
            ["[build : fetch] ", "[build : compile] ", "[test : unit] "]
        );
        assert_eq!(next, Next::Done);
        let one = [pod("tr-pod", "t", "tr", vec![step("echo", Terminated)])];
        let (prefixes, _) = read_all(RunKind::TaskRun, &one, &Filter::default(), false, true);
        assert_eq!(prefixes, ["[echo] "]);
    }

    #[test]
    fn following_waits_for_steps_and_tasks_still_to_come_and_ends_with_the_run() {
        use StepState::*;
        let pods = vec![pod(
            "p",
            "t1",
            "build",
            vec![step("one", Running), step("two", Waiting)],
        )];
        let mut done = BTreeSet::new();
        let Next::Read(first) = next(
            RunKind::PipelineRun,
            &pods,
            &done,
            &Filter::default(),
            true,
            false,
        ) else {
            panic!("the running step is read first");
        };
        assert!(first.follow, "a running step is streamed to its end");
        done.insert((first.pod, first.container));
        assert_eq!(
            next(
                RunKind::PipelineRun,
                &pods,
                &done,
                &Filter::default(),
                true,
                false
            ),
            Next::Wait,
            "step two has not started"
        );
        // Without -f nothing is waited for.
        assert_eq!(
            next(
                RunKind::PipelineRun,
                &pods,
                &done,
                &Filter::default(),
                false,
                false
            ),
            Next::Done
        );
        // All read, run not over: another TaskRun may come.
        let finished = vec![pod("p", "t1", "build", vec![step("one", Terminated)])];
        assert_eq!(
            next(
                RunKind::PipelineRun,
                &finished,
                &done,
                &Filter::default(),
                true,
                false
            ),
            Next::Wait
        );
        assert_eq!(
            next(
                RunKind::PipelineRun,
                &finished,
                &done,
                &Filter::default(),
                true,
                true
            ),
            Next::Done
        );
    }

    #[test]
    fn a_step_that_never_started_is_skipped_once_its_pod_or_the_run_is_over() {
        use StepState::*;
        let mut failed = pod(
            "p",
            "t",
            "build",
            vec![step("one", Terminated), step("two", Waiting)],
        );
        failed.finished = true;
        let (prefixes, next) = read_all(
            RunKind::PipelineRun,
            &[failed],
            &Filter::default(),
            true,
            false,
        );
        assert_eq!(prefixes, ["[build : one] "]);
        assert_eq!(next, Next::Wait, "the run is not over: more may come");
        let pending = pod("p", "t", "build", vec![step("one", Waiting)]);
        let (prefixes, next) = read_all(
            RunKind::PipelineRun,
            &[pending],
            &Filter::default(),
            true,
            true,
        );
        assert!(prefixes.is_empty());
        assert_eq!(next, Next::Done);
    }

    #[test]
    fn task_and_step_filters_pick_what_is_read() {
        use StepState::*;
        let pods = vec![
            pod(
                "a",
                "1",
                "build",
                vec![step("fetch", Terminated), step("compile", Terminated)],
            ),
            pod(
                "b",
                "2",
                "test",
                vec![step("compile", Terminated), step("unit", Terminated)],
            ),
        ];
        let only = |task: Option<&str>, step: Option<&str>| {
            let filter = Filter {
                task: task.map(Into::into),
                step: step.map(Into::into),
            };
            read_all(RunKind::PipelineRun, &pods, &filter, false, true).0
        };
        assert_eq!(
            only(Some("test"), None),
            ["[test : compile] ", "[test : unit] "]
        );
        assert_eq!(
            only(None, Some("compile")),
            ["[build : compile] ", "[test : compile] "]
        );
        assert_eq!(only(Some("build"), Some("fetch")), ["[build : fetch] "]);
        assert!(only(Some("deploy"), None).is_empty());
    }

    #[test]
    fn lines_are_prefixed_whole_and_a_partial_line_waits_for_its_end() {
        let mut buffer = b"one\ntwo\nthr".to_vec();
        let mut out = Vec::new();
        prefix_lines("[a : b] ", &mut buffer, &mut out);
        assert_eq!(out, b"[a : b] one\n[a : b] two\n");
        assert_eq!(buffer, b"thr");
        buffer.extend_from_slice(b"ee\n");
        prefix_lines("[a : b] ", &mut buffer, &mut out);
        assert!(out.ends_with(b"[a : b] three\n"));
        assert!(buffer.is_empty());
        let mut none = b"no newline".to_vec();
        let mut out = Vec::new();
        prefix_lines("x ", &mut none, &mut out);
        assert!(out.is_empty());
        assert_eq!(none, b"no newline");
    }

    #[test]
    fn a_run_s_task_runs_and_step_states_come_from_its_pods_in_order() {
        let pod = |name: &str,
                   created: &str,
                   task: &str,
                   phase: &str,
                   state: serde_json::Value|
         -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "creationTimestamp": created,
                             "labels": {"tekton.dev/pipelineTask": task, "tekton.dev/taskRun": format!("pr-{task}")}},
                "spec": {"containers": [{"name": "step-only", "image": "x"}]},
                "status": {"phase": phase, "containerStatuses": [
                    {"name": "step-only", "image": "x", "imageID": "", "ready": false, "restartCount": 0, "state": state}]},
            }))
            .unwrap()
        };
        let steps = run_steps(
            "member-2",
            &[
                pod(
                    "b",
                    "2026-01-01T00:00:02Z",
                    "test",
                    "Running",
                    serde_json::json!({"running": {"startedAt": "2026-01-01T00:00:03Z"}}),
                ),
                pod(
                    "a",
                    "2026-01-01T00:00:01Z",
                    "build",
                    "Failed",
                    serde_json::json!({"terminated": {"exitCode": 2, "reason": "Error"}}),
                ),
            ],
        );
        assert_eq!(steps.cluster, "member-2");
        let tasks: Vec<&str> = steps.task_runs.iter().map(|t| t.task.as_str()).collect();
        assert_eq!(tasks, ["build", "test"]);
        let build = &steps.task_runs[0];
        assert_eq!(
            (build.task_run.as_str(), build.phase.as_str()),
            ("pr-build", "Failed")
        );
        assert_eq!(build.steps[0].state, "Terminated");
        assert_eq!(build.steps[0].exit_code, Some(2));
        assert_eq!(build.steps[0].reason.as_deref(), Some("Error"));
        let test = &steps.task_runs[1].steps[0];
        assert_eq!(test.state, "Running");
        assert_eq!(test.started_at.as_deref(), Some("2026-01-01T00:00:03Z"));
    }

    #[test]
    fn a_pod_is_read_from_tekton_s_labels_and_container_statuses() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "build-pod", "creationTimestamp": "2026-01-01T00:00:00Z",
                         "labels": {"tekton.dev/pipelineTask": "build", "tekton.dev/taskRun": "pr-build"}},
            "spec": {"containers": [
                {"name": "step-fetch", "image": "x"},
                {"name": "sidecar-db", "image": "x"},
                {"name": "step-compile", "image": "x"}]},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "step-fetch", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 0}}},
                {"name": "step-compile", "image": "x", "imageID": "", "ready": true, "restartCount": 0,
                 "state": {"running": {}}}]},
        }))
        .unwrap();
        let view = PodView::from_pod(&pod);
        assert_eq!(view.task, "build");
        assert!(!view.finished);
        assert_eq!(
            view.steps,
            [
                StepView {
                    container: "step-fetch".into(),
                    step: "fetch".into(),
                    state: StepState::Terminated
                },
                StepView {
                    container: "step-compile".into(),
                    step: "compile".into(),
                    state: StepState::Running
                },
            ]
        );
    }
}
