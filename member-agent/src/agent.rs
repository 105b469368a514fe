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

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{
    Container, Node, NodeStatus, Pod, PodStatus, ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::Value;
use serde_json::json;
use tekfed_api::assignment::attempt_of;
use tekfed_api::guard::{LABEL_MANAGED_BY, MANAGED_BY};
use tekfed_api::tekton::{TektonRun, cancel_values};
use tekfed_api::{MemberReport, RunAssignment, RunKind, cluster_namespace};
use tekfed_runtime::connect::{drop_managed_fields, tekton_resource};
use tokio::sync::Notify;

use crate::credentials::HubCredentials;
use crate::health::Health;
use crate::load;
use crate::metrics::{Metrics, OutcomeLabel};
use crate::plan::{Assignment, MemberRun, Step, plan};

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
    /// Added to every time the agent writes (test-only `--clock-offset`):
    /// a member whose clock is off must change nothing on the hub.
    pub clock_offset: SignedDuration,
}

/// The longest any one call to either API server may take. A call that
/// hangs (a server stopped mid-answer) must not hold up the heartbeat or
/// the runs behind it; it fails and is made again.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A call with [`CALL_TIMEOUT`]: a hung call becomes an error like any other.
pub(crate) async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| {
            Err(kube::Error::Service(
                format!("no answer within {CALL_TIMEOUT:?}").into(),
            ))
        })
}

struct Stores {
    assignments: Store<RunAssignment>,
    /// Every TaskRun on the member that is not a PipelineRun's child, and
    /// every PipelineRun: tekfed's are found by label, the rest are counted
    /// for load. Stripped of what neither needs ([`slim_run`]).
    task_runs: Store<TektonRun>,
    pipeline_runs: Store<TektonRun>,
    /// Pods not finished, for load ([`slim_pod`]).
    pods: Store<Pod>,
    /// Nodes, for load (their allocatable only).
    nodes: Store<Node>,
    /// Assignments whose steps were all taken (or had none), with the versions
    /// of assignment and member run they were planned from. Until either
    /// changes there is nothing new to do: a pass skips them. That keeps a
    /// pass cheap with thousands of finished runs stored, and keeps a
    /// second pass from repeating a write the stores have not shown yet
    /// (a release that would fail its precondition, a report made twice).
    settled: Mutex<HashMap<String, Versions>>,
    /// Assignments whose steps are being taken now: a pass leaves them.
    in_flight: Mutex<HashSet<String>>,
}

/// The resourceVersions of a assignment and its member run.
type Versions = (Option<String>, Option<String>);

impl Stores {
    fn settled(&self) -> std::sync::MutexGuard<'_, HashMap<String, Versions>> {
        self.settled.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn runs(&self, kind: RunKind) -> &Store<TektonRun> {
        match kind {
            RunKind::TaskRun => &self.task_runs,
            RunKind::PipelineRun => &self.pipeline_runs,
        }
    }
}

/// Whether the run is tekfed's.
fn managed(run: &TektonRun) -> bool {
    run.labels().get(LABEL_MANAGED_BY).map(String::as_str) == Some(MANAGED_BY)
}

/// What the agent keeps of a member run: not its managed fields, and not
/// the Task or Pipeline spec Tekton copies into its status (what was run
/// is the hub's; the status reported keeps what users read).
fn slim_run(run: &mut TektonRun) {
    drop_managed_fields(run);
    if let Some(status) = run.status.as_mut().and_then(Value::as_object_mut) {
        for copied in ["taskSpec", "pipelineSpec", "provenance"] {
            status.remove(copied);
        }
    }
}

/// What the agent keeps of a pod: where it is, its phase and what its
/// containers request; nothing else.
fn slim_pod(pod: &mut Pod) {
    drop_managed_fields(pod);
    pod.metadata.annotations = None;
    pod.metadata.labels = None;
    pod.metadata.owner_references = None;
    if let Some(spec) = pod.spec.as_mut() {
        spec.volumes = None;
        for c in spec.containers.iter_mut() {
            let requests = c.resources.take().and_then(|r| r.requests);
            *c = Container {
                name: std::mem::take(&mut c.name),
                resources: Some(ResourceRequirements {
                    requests,
                    ..Default::default()
                }),
                ..Default::default()
            };
        }
        spec.init_containers = None;
    }
    if let Some(status) = pod.status.as_mut() {
        *status = PodStatus {
            phase: status.phase.take(),
            ..Default::default()
        };
    }
}

/// What the agent keeps of a node: its allocatable resources.
fn slim_node(node: &mut Node) {
    drop_managed_fields(node);
    node.metadata.annotations = None;
    node.metadata.labels = None;
    node.spec = None;
    if let Some(status) = node.status.as_mut() {
        *status = NodeStatus {
            allocatable: status.allocatable.take(),
            ..Default::default()
        };
    }
}

/// Whether a store has its first list.
fn ready<K: kube::Resource + Clone + 'static>(store: &Store<K>) -> bool
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store.wait_until_ready().now_or_never().is_some()
}

impl Agent {
    /// The time the agent writes: its clock (plus the test-only offset).
    fn now(&self) -> Time {
        let now = Timestamp::now();
        Time(now.checked_add(self.clock_offset).unwrap_or(now))
    }

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
            let config = match kind {
                RunKind::TaskRun => watcher::Config::default().labels(CHILD_OF_PIPELINE_RUN),
                RunKind::PipelineRun => watcher::Config::default(),
            };
            let stream = watcher(api, config)
                .default_backoff()
                .modify(slim_run)
                .reflect(writer);
            run_watches.push(watch(stream, wake.clone()));
        }
        // Pods and nodes change often and matter only to the next
        // heartbeat: they do not wake the sync.
        let (pods, pods_writer) = reflector::store();
        let pods_watch = watch(
            watcher(
                Api::<Pod>::all(self.member.clone()),
                watcher::Config::default().fields("status.phase!=Succeeded,status.phase!=Failed"),
            )
            .default_backoff()
            .modify(slim_pod)
            .reflect(pods_writer),
            Arc::new(Notify::new()),
        );
        let (nodes, nodes_writer) = reflector::store();
        let nodes_watch = watch(
            watcher(
                Api::<Node>::all(self.member.clone()),
                watcher::Config::default(),
            )
            .default_backoff()
            .modify(slim_node)
            .reflect(nodes_writer),
            Arc::new(Notify::new()),
        );
        let stores = Arc::new(Stores {
            assignments,
            pipeline_runs: run_stores.pop().expect("two stores"),
            task_runs: run_stores.pop().expect("two stores"),
            pods,
            nodes,
            settled: Mutex::default(),
            in_flight: Mutex::default(),
        });
        let sync = async {
            let _ = stores.assignments.wait_until_ready().await;
            // Each assignment's steps run as a task of their own, so a
            // pass never waits for a slow write: a new run's release does
            // not queue behind other runs' reports. Dropped with this
            // loop (when the agent stops leading), the tasks stop too.
            let mut tasks = tokio::task::JoinSet::new();
            let permits = Arc::new(tokio::sync::Semaphore::new(64));
            loop {
                while tasks.try_join_next().is_some() {}
                self.sync(&stores, &mut tasks, &permits).await;
                // Woken by any change; at worst once a second.
                let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
                // Let a burst of events settle into one pass.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        // The member's API server is read in a loop of its own: one that
        // hangs (paused mid-answer) delays that loop by its timeouts, never
        // the heartbeat, which only says the agent is alive and reports.
        // The hub judges the member's API server by reaching it itself.
        let versions = Mutex::new(Reported::default());
        let probe = async {
            loop {
                self.probe(&versions).await;
                tokio::time::sleep(self.heartbeat).await;
            }
        };
        let heartbeat = async {
            loop {
                let began = std::time::Instant::now();
                let written = self.report(&stores, &versions).await;
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
        tokio::join!(
            assignments_watch,
            a,
            b,
            pods_watch,
            nodes_watch,
            sync,
            probe,
            heartbeat,
            pulse,
            renewal
        );
    }

    async fn sync(
        self: &Arc<Self>,
        stores: &Arc<Stores>,
        tasks: &mut tokio::task::JoinSet<()>,
        permits: &Arc<tokio::sync::Semaphore>,
    ) {
        let assignments = stores.assignments.state();
        for assignment in &assignments {
            let kind = assignment.spec.run.kind;
            let key = ObjectRef::new_with(
                &assignment.spec.run.name,
                tekton_resource(kind.tekton_kind()),
            )
            .within(&assignment.spec.run.namespace);
            // This placement's copy only: one from an earlier placement
            // on this cluster is the hub's to end and remove.
            let member_run = stores.runs(kind).get(&key).filter(|r| {
                managed(r)
                    && r.labels().get(UID_LABEL) == Some(&assignment.spec.run.uid)
                    && attempt_of(r.labels()) == assignment.spec.attempt
            });
            let versions: Versions = (
                assignment.resource_version(),
                member_run.as_ref().and_then(|r| r.resource_version()),
            );
            let uid = assignment.name_any();
            if stores.settled().get(&uid) == Some(&versions) {
                continue;
            }
            if !stores.in_flight().insert(uid.clone()) {
                // Its steps are being taken: the pass after they end looks again.
                continue;
            }
            let (agent, stores, permits) = (self.clone(), stores.clone(), permits.clone());
            let assignment = assignment.clone();
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let all_taken = agent.take_steps(&assignment, kind, member_run).await;
                if all_taken {
                    stores.settled().insert(uid.clone(), versions);
                }
                stores.in_flight().remove(&uid);
            });
        }
        {
            let present: HashSet<String> = assignments.iter().map(|r| r.name_any()).collect();
            stores.settled().retain(|uid, _| present.contains(uid));
        }
        // Held runs whose assignment is gone were revoked: delete them unstarted.
        for kind in [RunKind::PipelineRun] {
            for run in stores.runs(kind).state().into_iter().filter(|r| managed(r)) {
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
                if let Ok(None) = bounded(api.get_opt(&uid)).await
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
                status.released_time = Some(self.now());
                let written = bounded(assignments.replace_status(
                    &assignment.name_any(),
                    &PostParams::default(),
                    &released,
                ))
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
                let started =
                    bounded(api.patch(&run.name, &PatchParams::default(), &Patch::Merge(&patch)))
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
                let cancelled =
                    bounded(api.patch(&run.name, &PatchParams::default(), &Patch::Merge(&patch)))
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
                let patch = json!({"status": {"phase": phase, "runStatus": status, "observedTime": self.now()}});
                let reported = bounded(assignments.patch_status(
                    &assignment.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                ))
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

    /// The steps [`plan`] says for one assignment; true when all were taken.
    async fn take_steps(
        &self,
        assignment: &RunAssignment,
        kind: RunKind,
        member_run: Option<Arc<TektonRun>>,
    ) -> bool {
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
        for step in plan(kind, Some(&view), run_view.as_ref()) {
            if step == Step::DeleteHeld {
                return match &member_run {
                    Some(run) => self.delete_held(run, kind).await,
                    None => true,
                };
            }
            if !self.execute(step, assignment, kind).await {
                return false;
            }
        }
        true
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
        let deleted = bounded(api.delete(&run.name_any(), &params)).await;
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

    /// Read the member's API server: its version, each time (its answer
    /// tells the agent's own probes whether the member is reachable), and
    /// Tekton's, once a minute. Every read is bounded.
    async fn probe(&self, versions: &Mutex<Reported>) {
        let version = bounded(self.member.apiserver_version()).await;
        self.health
            .member(version.as_ref().map(|_| ()).map_err(describe));
        if let Ok(v) = version {
            versions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .kubernetes = Some(v.git_version);
        }
        let due = versions.lock().unwrap_or_else(|p| p.into_inner()).due();
        if due {
            // Tekton publishes its version in this ConfigMap.
            let infos: Api<k8s_openapi::api::core::v1::ConfigMap> =
                Api::namespaced(self.member.clone(), tekfed_api::rbac::TEKTON_NAMESPACE);
            if let Ok(cm) = bounded(infos.get_opt(tekfed_api::rbac::TEKTON_VERSION_CONFIGMAP)).await
            {
                let mut v = versions.lock().unwrap_or_else(|p| p.into_inner());
                v.tekton = cm.and_then(|cm| cm.data?.get("version").cloned());
                v.read = Some(std::time::Instant::now());
            }
        }
    }

    /// Heartbeat: load, pending pods and versions into the MemberReport,
    /// all from the watch caches and [`Reported`]: one write to the hub and
    /// no read of the member, so a member API server that hangs never
    /// makes the heartbeat late. `Err` says why it was not written.
    async fn report(&self, stores: &Stores, versions: &Mutex<Reported>) -> Result<(), String> {
        let runs: Vec<Arc<TektonRun>> = stores
            .task_runs
            .state()
            .into_iter()
            .chain(stores.pipeline_runs.state())
            .collect();
        fn status(r: &Arc<TektonRun>) -> &Value {
            r.status.as_ref().unwrap_or(&Value::Null)
        }
        let mut load = load::count(runs.iter().filter(|r| managed(r)).map(status));
        // Until every cache has its first list, the member's totals are
        // not known: said by leaving them out, not by a count too low.
        let complete = ready(&stores.task_runs)
            && ready(&stores.pipeline_runs)
            && ready(&stores.pods)
            && ready(&stores.nodes);
        let pods = stores.pods.state();
        let total = complete.then(|| {
            let mut total = load::count(runs.iter().map(status));
            total.pending_pods = pods
                .iter()
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending"))
                .count() as i64;
            total
        });
        if let Some(t) = &total {
            load.pending_pods = t.pending_pods;
        }
        let nodes = stores.nodes.state();
        if complete && !nodes.is_empty() {
            // Read in the caches' own copies: nothing is cloned per heartbeat.
            let (cpu, cpu_requested, memory, memory_requested) = load::capacity(
                nodes.iter().map(|n| n.as_ref()),
                pods.iter().map(|p| p.as_ref()),
            );
            load.cpu_allocatable_millis = Some(cpu);
            load.cpu_requested_millis = Some(cpu_requested);
            load.memory_allocatable_bytes = Some(memory);
            load.memory_requested_bytes = Some(memory_requested);
        }
        let (kubernetes, tekton) = {
            let v = versions.lock().unwrap_or_else(|p| p.into_inner());
            (v.kubernetes.clone(), v.tekton.clone())
        };
        let patch = json!({"status": {
            "tektonVersion": tekton,
            "heartbeatTime": self.now(),
            "load": load,
            "total": total,
            "kubernetesVersion": kubernetes,
            "agentVersion": env!("CARGO_PKG_VERSION"),
            "credential": self.credentials.report(),
        }});
        let reports: Api<MemberReport> = Api::namespaced(self.hub.clone(), &self.namespace());
        match bounded(reports.patch_status(
            &self.cluster,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        ))
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

/// The versions a heartbeat reports, as [`Agent::probe`] last read them.
#[derive(Default)]
struct Reported {
    kubernetes: Option<String>,
    tekton: Option<String>,
    read: Option<std::time::Instant>,
}

impl Reported {
    fn due(&self) -> bool {
        self.read
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
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
