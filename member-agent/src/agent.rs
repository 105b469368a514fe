//! The agent's loops: heartbeat and load into its `MemberReport`, the
//! run sync that releases, starts, reports and cleans up runs, and the
//! renewal of its hub token ([`crate::credentials`]).
//!
//! Both sides are watched (the assignments in the cluster's hub namespace,
//! tekfed's runs on the member), and any change wakes one sync pass over
//! every run, so a burst of changes costs one pass, not one per event.
//! Watches reconnect with backoff when either API server restarts; an
//! agent that cannot reach the hub releases nothing.
//!
//! Each heartbeat and each write for a run is counted in [`Metrics`], and
//! the heartbeat's outcome and a pulse of the loops are recorded in
//! [`Health`] for the probes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::Value;
use serde_json::json;
use tekfed_api::tekton::{TektonRun, cancel_values};
use tekfed_api::{MemberReport, RunAssignment, RunKind, cluster_namespace};
use tekfed_runtime::connect::{drop_managed_fields, tekton_resource};
use tokio::sync::Notify;

use crate::credentials::HubCredentials;
use crate::health::Health;
use crate::load;
use crate::metrics::{Metrics, OutcomeLabel};
use crate::plan::{Assignment, MemberRun, Step, plan};

const MANAGED: &str = "app.kubernetes.io/managed-by=tekfed";
/// The label Tekton puts on a PipelineRun's child TaskRuns. Tekton copies
/// a PipelineRun's labels (tekfed's among them) to its TaskRuns: those are
/// Tekton's, part of a run already counted, not runs of tekfed's.
const CHILD_OF_PIPELINE_RUN: &str = "!tekton.dev/pipelineRun";
const UID_LABEL: &str = "tekfed.io/federated-uid";

/// One agent: a member cluster and its narrow hub identity.
pub struct Agent {
    pub cluster: String,
    /// Sends [`Agent::credentials`]' token in use at each request.
    pub hub: Client,
    pub credentials: Arc<HubCredentials>,
    pub member: Client,
    pub heartbeat: Duration,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
}

struct Stores {
    assignments: Store<RunAssignment>,
    task_runs: Store<TektonRun>,
    pipeline_runs: Store<TektonRun>,
    /// Assignments whose steps were all taken (or had none), with the versions
    /// of assignment and member run they were planned from. Until either
    /// changes there is nothing new to do: a pass skips them. That keeps a
    /// pass cheap with thousands of finished runs stored, and keeps a
    /// second pass from repeating a write the stores have not shown yet
    /// (a release that would fail its precondition, a report made twice).
    settled: Mutex<HashMap<String, Versions>>,
}

/// The resourceVersions of a assignment and its member run.
type Versions = (Option<String>, Option<String>);

impl Stores {
    fn settled(&self) -> std::sync::MutexGuard<'_, HashMap<String, Versions>> {
        self.settled.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn runs(&self, kind: RunKind) -> &Store<TektonRun> {
        match kind {
            RunKind::TaskRun => &self.task_runs,
            RunKind::PipelineRun => &self.pipeline_runs,
        }
    }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

impl Agent {
    fn namespace(&self) -> String {
        cluster_namespace(&self.cluster)
    }

    /// Run until the process stops.
    pub async fn run(self: Arc<Self>) {
        self.health.running();
        self.metrics.leader.set(1);
        let wake = Arc::new(Notify::new());
        let assignments_api: Api<RunAssignment> =
            Api::namespaced(self.hub.clone(), &self.namespace());
        let (assignments, writer) = reflector::store();
        let assignments_watch = watch(
            watcher(assignments_api, watcher::Config::default())
                .default_backoff()
                .modify(drop_managed_fields)
                .reflect(writer),
            wake.clone(),
        );
        let mut run_stores = Vec::new();
        let mut run_watches = Vec::new();
        for kind in [RunKind::TaskRun, RunKind::PipelineRun] {
            let resource = tekton_resource(kind.tekton_kind());
            let api: Api<TektonRun> = Api::all_with(self.member.clone(), &resource);
            let writer = reflector::store::Writer::<TektonRun>::new(resource);
            run_stores.push(writer.as_reader());
            let selector = match kind {
                RunKind::TaskRun => format!("{MANAGED},{CHILD_OF_PIPELINE_RUN}"),
                RunKind::PipelineRun => MANAGED.to_owned(),
            };
            let stream = watcher(api, watcher::Config::default().labels(&selector))
                .default_backoff()
                .modify(drop_managed_fields)
                .reflect(writer);
            run_watches.push(watch(stream, wake.clone()));
        }
        let stores = Stores {
            assignments,
            pipeline_runs: run_stores.pop().expect("two stores"),
            task_runs: run_stores.pop().expect("two stores"),
            settled: Mutex::default(),
        };
        let sync = async {
            let _ = stores.assignments.wait_until_ready().await;
            loop {
                self.sync(&stores).await;
                // Woken by any change; at worst once a second.
                let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
                // Let a burst of events settle into one pass.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let heartbeat = async {
            loop {
                let began = std::time::Instant::now();
                let written = self.report(&stores).await;
                self.metrics
                    .heartbeat_duration
                    .observe(began.elapsed().as_secs_f64());
                let outcome = if written.is_ok() { "written" } else { "failed" };
                self.metrics
                    .heartbeats
                    .get_or_create(&OutcomeLabel { outcome })
                    .inc();
                if written.is_ok() {
                    self.metrics
                        .last_heartbeat
                        .set(k8s_openapi::jiff::Timestamp::now().as_second());
                }
                self.health.heartbeat(written);
                tokio::time::sleep(self.heartbeat).await;
            }
        };
        // Polled with the loops, in their task: a pulse that stops means
        // something blocks that task's thread (see crate::health).
        let pulse = async {
            loop {
                self.health.pulse();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        let renewal = self
            .credentials
            .keep_renewed(&self.hub, &self.member, &self.metrics);
        let mut run_watches = run_watches.into_iter();
        let (a, b) = (
            run_watches.next().expect("two watches"),
            run_watches.next().expect("two watches"),
        );
        tokio::join!(assignments_watch, a, b, sync, heartbeat, pulse, renewal);
    }

    async fn sync(&self, stores: &Stores) {
        let assignments = stores.assignments.state();
        // Assignments are independent: take them concurrently, so one pass over
        // a burst costs the slowest write, not the sum of them.
        futures::stream::iter(assignments.iter())
            .for_each_concurrent(64, |assignment| async move {
                let kind = assignment.spec.run.kind;
                let key = ObjectRef::new_with(
                    &assignment.spec.run.name,
                    tekton_resource(kind.tekton_kind()),
                )
                .within(&assignment.spec.run.namespace);
                let member_run = stores
                    .runs(kind)
                    .get(&key)
                    .filter(|r| r.labels().get(UID_LABEL) == Some(&assignment.spec.run.uid));
                let versions: Versions = (
                    assignment.resource_version(),
                    member_run.as_ref().and_then(|r| r.resource_version()),
                );
                let uid = assignment.name_any();
                if stores.settled().get(&uid) == Some(&versions) {
                    return;
                }
                let view = Assignment {
                    released: assignment
                        .status
                        .as_ref()
                        .and_then(|s| s.released)
                        .unwrap_or(false),
                    revoked: assignment.status.as_ref().is_some_and(|s| s.is_revoked()),
                    phase: assignment.status.as_ref().and_then(|s| s.phase),
                    run_status: assignment
                        .status
                        .as_ref()
                        .and_then(|s| s.run_status.clone()),
                };
                let run_view = member_run.as_deref().map(MemberRun::of);
                let mut all_taken = true;
                for step in plan(kind, Some(&view), run_view.as_ref()) {
                    if step == Step::DeleteHeld {
                        if let Some(run) = &member_run {
                            all_taken = self.delete_held(run, kind).await;
                        }
                        break;
                    }
                    if !self.execute(step, assignment, kind).await {
                        all_taken = false;
                        break;
                    }
                }
                if all_taken {
                    stores.settled().insert(uid, versions);
                }
            })
            .await;
        {
            let present: HashSet<String> = assignments.iter().map(|r| r.name_any()).collect();
            stores.settled().retain(|uid, _| present.contains(uid));
        }
        // Held runs whose assignment is gone were revoked: delete them unstarted.
        for kind in [RunKind::PipelineRun] {
            for run in stores.runs(kind).state() {
                let held = MemberRun::of(&run);
                if !held.held() {
                    continue;
                }
                let uid = run.labels().get(UID_LABEL).cloned().unwrap_or_default();
                if assignments.iter().any(|r| r.spec.run.uid == uid) {
                    continue;
                }
                // The store may lag the hub: ask the hub itself before deleting.
                let api: Api<RunAssignment> = Api::namespaced(self.hub.clone(), &self.namespace());
                if let Ok(None) = api.get_opt(&uid).await
                    && plan(kind, None, Some(&held)) == vec![Step::DeleteHeld]
                {
                    self.delete_held(&run, kind).await;
                }
            }
        }
    }

    /// Take one step; false stops the steps after it.
    async fn execute(&self, step: Step, assignment: &RunAssignment, kind: RunKind) -> bool {
        let assignments: Api<RunAssignment> = Api::namespaced(self.hub.clone(), &self.namespace());
        let run = &assignment.spec.run;
        match step {
            Step::Release => {
                // The conditional write: a PUT carrying the resourceVersion
                // read. If the hub revoked or changed the assignment
                // meanwhile, this fails and nothing starts.
                let mut released = assignment.clone();
                let status = released.status.get_or_insert_with(Default::default);
                status.released = Some(true);
                status.released_time = Some(now());
                let written = assignments
                    .replace_status(&assignment.name_any(), &PostParams::default(), &released)
                    .await;
                self.metrics.step("release", &written);
                match written {
                    Ok(_) => {
                        tracing::debug!(run = %run.name, ns = %run.namespace, "released");
                        true
                    }
                    Err(e) => {
                        tracing::info!(run = %run.name, ns = %run.namespace, error = %e, "not released");
                        false
                    }
                }
            }
            Step::Unhold => {
                let api: Api<TektonRun> = Api::namespaced_with(
                    self.member.clone(),
                    &run.namespace,
                    &tekton_resource(kind.tekton_kind()),
                );
                let patch = json!({"spec": {"status": null}});
                let started = api
                    .patch(&run.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await;
                self.metrics.step("start", &started);
                started
                    .map_err(|e| tracing::warn!(run = %run.name, error = %e, "could not start the released run"))
                    .is_ok()
            }
            Step::DeleteHeld => false,
            Step::Cancel => {
                let api: Api<TektonRun> = Api::namespaced_with(
                    self.member.clone(),
                    &run.namespace,
                    &tekton_resource(kind.tekton_kind()),
                );
                let cancel = cancel_values(kind)[0];
                let patch = json!({"spec": {"status": cancel}});
                let cancelled = api
                    .patch(&run.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await;
                self.metrics.step("cancel", &cancelled);
                match cancelled {
                    Ok(_) => {
                        tracing::info!(run = %run.name, ns = %run.namespace, "cancelled a run the hub took off this cluster");
                        true
                    }
                    Err(e) => {
                        tracing::warn!(run = %run.name, error = %e, "could not cancel a revoked run");
                        false
                    }
                }
            }
            Step::Report { phase, status } => {
                let patch =
                    json!({"status": {"phase": phase, "runStatus": status, "observedTime": now()}});
                let reported = assignments
                    .patch_status(
                        &assignment.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&patch),
                    )
                    .await;
                self.metrics.step("report", &reported);
                reported
                    .map_err(
                        |e| tracing::warn!(run = %run.name, error = %e, "could not report status"),
                    )
                    .is_ok()
            }
        }
    }

    /// Delete a held run; true when it is gone.
    async fn delete_held(&self, run: &TektonRun, kind: RunKind) -> bool {
        let api: Api<TektonRun> = Api::namespaced_with(
            self.member.clone(),
            &run.namespace().unwrap_or_default(),
            &tekton_resource(kind.tekton_kind()),
        );
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: run.uid(),
                resource_version: run.resource_version(),
            }),
            ..Default::default()
        };
        let deleted = api.delete(&run.name_any(), &params).await;
        self.metrics.step("delete_held", &deleted);
        match deleted {
            Ok(_) => {
                tracing::info!(run = %run.name_any(), "deleted a held run whose assignment was revoked");
                true
            }
            Err(e) => {
                tracing::debug!(run = %run.name_any(), error = %e, "held run not deleted");
                false
            }
        }
    }

    /// Heartbeat: load, pending pods and versions into the MemberReport.
    /// `Err` says why it was not written.
    async fn report(&self, stores: &Stores) -> Result<(), String> {
        let tekfed_runs: Vec<_> = stores
            .task_runs
            .state()
            .into_iter()
            .chain(stores.pipeline_runs.state())
            .collect();
        let load = load::count(
            tekfed_runs
                .iter()
                .map(|r| r.status.as_ref().unwrap_or(&Value::Null)),
        );
        let mut total = None;
        let mut all_statuses = Vec::new();
        let mut complete = true;
        for kind in [RunKind::TaskRun, RunKind::PipelineRun] {
            let api: Api<TektonRun> =
                Api::all_with(self.member.clone(), &tekton_resource(kind.tekton_kind()));
            let params = match kind {
                RunKind::TaskRun => ListParams::default().labels(CHILD_OF_PIPELINE_RUN),
                RunKind::PipelineRun => ListParams::default(),
            };
            match api.list(&params).await {
                Ok(list) => all_statuses
                    .extend(list.items.into_iter().map(|r| r.status.unwrap_or_default())),
                Err(_) => complete = false,
            }
        }
        if complete {
            let mut counted = load::count(&all_statuses);
            let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::all(self.member.clone());
            if let Ok(list) = pods
                .list_metadata(&ListParams::default().fields("status.phase=Pending"))
                .await
            {
                counted.pending_pods = list.items.len() as i64;
            }
            total = Some(counted);
        }
        // The member's answer to this one tells the probes whether the
        // member's API server is reachable (the reads above may be refused
        // by RBAC alone).
        let version = self.member.apiserver_version().await;
        self.health
            .member(version.as_ref().map(|_| ()).map_err(describe));
        let version = version.ok().map(|v| v.git_version);
        let mut load = load;
        if let Some(t) = &total {
            load.pending_pods = t.pending_pods;
        }
        // Allocatable vs requested CPU and memory, where the member has nodes.
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.member.clone());
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::all(self.member.clone());
        if let (Ok(nodes), Ok(pods)) = (
            nodes.list(&ListParams::default()).await,
            pods.list(&ListParams::default()).await,
        ) && !nodes.items.is_empty()
        {
            let (cpu, cpu_requested, memory, memory_requested) =
                load::capacity(&nodes.items, &pods.items);
            load.cpu_allocatable_millis = Some(cpu);
            load.cpu_requested_millis = Some(cpu_requested);
            load.memory_allocatable_bytes = Some(memory);
            load.memory_requested_bytes = Some(memory_requested);
        }
        // Tekton publishes its version in this ConfigMap.
        let infos: Api<k8s_openapi::api::core::v1::ConfigMap> =
            Api::namespaced(self.member.clone(), tekfed_api::rbac::TEKTON_NAMESPACE);
        let tekton_version = infos
            .get_opt(tekfed_api::rbac::TEKTON_VERSION_CONFIGMAP)
            .await
            .ok()
            .flatten()
            .and_then(|cm| cm.data?.get("version").cloned());
        let patch = json!({"status": {
            "tektonVersion": tekton_version,
            "heartbeatTime": now(),
            "load": load,
            "total": total,
            "kubernetesVersion": version,
            "agentVersion": env!("CARGO_PKG_VERSION"),
            "credential": self.credentials.report(),
        }});
        let reports: Api<MemberReport> = Api::namespaced(self.hub.clone(), &self.namespace());
        match reports
            .patch_status(
                &self.cluster,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => {
                self.metrics.load(&load, total.as_ref());
                Ok(())
            }
            Err(e) => {
                tracing::warn!(cluster = %self.cluster, error = %e, "heartbeat not written");
                Err(describe(&e))
            }
        }
    }
}

/// An error with its causes, on one line: kube's own message alone
/// ("client error (Connect)") hides the reason ("Connection refused").
pub(crate) fn describe(error: &kube::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// Drive a reflector stream, waking the sync on every event.
async fn watch<S, T, E>(stream: S, wake: Arc<Notify>)
where
    S: futures::Stream<Item = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(_) => wake.notify_one(),
            Err(e) => tracing::debug!(error = %e, "watch interrupted; retrying"),
        }
    }
}
