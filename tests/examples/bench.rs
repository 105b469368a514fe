//! `make bench`: tekfed's figures on this machine, each beside a baseline
//! measured in the same run. Prints a table per measure and writes
//! `target/bench/results.json`. Benchmarks print figures; nothing here
//! fails on time.
//!
//! `cargo run --release -p tekfed-tests --example bench -- [--full] [--burst N] [--profile] [--json PATH]`
//!
//! Measures, on a test bed (hub + 3 members, real API servers, the hub and
//! agents as processes, each member running its own Tekton controller and
//! webhook, scheduler, controller-manager and kwok; all on this machine's
//! cores, so Tekton's own work is in every figure):
//! 1. dispatch throughput and latency against the raw write rate of the
//!    same API servers (the same number of TaskRuns created straight on
//!    the members by one kube-rs client with the same concurrency), API
//!    writes per run from the servers' own `apiserver_request_total`, the
//!    write efficiency, and latency at half the peak rate;
//!
//!    1b. at the end, on the same bed, a smaller burst of runs that each
//!    need seven hub objects carried to their member (a Task, its
//!    StepAction, a ServiceAccount with its Secret and image pull Secret,
//!    a ConfigMap and a Secret workspace): their writes per run, counted
//!    the same way, beside 1's, and the writes to those kinds on the
//!    members (about one apply per object per member, and one removal
//!    after: what is already there costs no write);
//!    1c. native runs: as many Tekton TaskRuns created on the hub with
//!    `spec.managedBy: tekfed.io/hub` as in 1b, the same spec as 1: how
//!    fast they are scheduled and shown Succeeded, and their writes per
//!    run (each carried by a shadow FederatedTaskRun, its own status
//!    written too) beside 1's;
//! 2. status latency, member run finished → hub status shows it;
//! 3. balance over equal members and over unequal `maxConcurrentRuns`;
//! 5. hub RSS and CPU during the burst and at rest with the runs stored;
//! 6. the hub's client limits.
//!
//! (4, the scheduler alone, is `hub/examples/bench_scheduler.rs`; its JSON
//! is merged in when present.)

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tekfed_api::dependencies::LABEL_CARRY_SECRETS;
use tekfed_api::runs::RunPhase;
use tekfed_api::{
    FederatedStepAction, FederatedTask, FederatedTaskRun, MemberCluster, RunAssignment,
};
use tekfed_runtime::connect::tekton_resource;
use tekfed_testbed::federation::federate;
use tekfed_testbed::{HUB, TestBed, Write, writes_by_resource};

/// Concurrent creates, for tekfed's burst and the raw baseline alike.
const CONCURRENCY: usize = 32;

struct Mode {
    name: &'static str,
    burst: usize,
    half_rate: usize,
    balance: usize,
    stored: usize,
    /// Runs in the dependency burst. Carrying costs writes per object and
    /// member, not per run, so a few runs per member show it: 60 (about 20
    /// per member, overlapping, so each copy is met already there many
    /// times) keep quick mode quick; full mode takes as many as quick
    /// mode's main burst, over which that fixed cost is spread thinner.
    deps: usize,
}

const QUICK: Mode = Mode {
    name: "quick",
    burst: 300,
    half_rate: 100,
    balance: 90,
    stored: 600,
    deps: 60,
};
const FULL: Mode = Mode {
    name: "full",
    burst: 5000,
    half_rate: 1000,
    balance: 600,
    stored: 10_000,
    deps: 300,
};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (
        percentile(&v, 0.5),
        percentile(&v, 0.95),
        percentile(&v, 0.99),
    )
}

fn task_run(ns: &str, name: &str, extra_labels: Value) -> Value {
    let mut labels = json!({"tekfed-bench": "1"});
    if let (Some(l), Some(e)) = (labels.as_object_mut(), extra_labels.as_object()) {
        l.extend(e.clone());
    }
    json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"taskSpec": {"steps": [{"name": "s", "image": "alpine", "script": "true"}]}},
    })
}

/// When each run reached each stage, by run name, from watches.
#[derive(Default)]
struct Seen {
    created: HashMap<String, Instant>,
    released: HashMap<String, Instant>,
    on_member: HashMap<String, Instant>,
    member_done: HashMap<String, Instant>,
    hub_done: HashMap<String, Instant>,
    cluster: HashMap<String, String>,
}

type Shared = Arc<Mutex<Seen>>;

fn first(map: &mut HashMap<String, Instant>, name: String) {
    map.entry(name).or_insert_with(Instant::now);
}

/// Watch the hub's runs and assignments and the members' TaskRuns in `ns`.
async fn watch_all(bed: &TestBed, ns: &str, seen: Shared) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let hub = bed.client(HUB).await.unwrap();
    let runs: Api<FederatedTaskRun> = Api::namespaced(hub.clone(), ns);
    let s = seen.clone();
    tasks.push(tokio::spawn(async move {
        let mut stream =
            std::pin::pin!(watcher(runs, watcher::Config::default()).applied_objects());
        while let Some(Ok(run)) = stream.next().await {
            let status = run.status.unwrap_or_default();
            let mut seen = s.lock().unwrap();
            if let Some(c) = status.cluster {
                seen.cluster
                    .insert(run.metadata.name.clone().unwrap_or_default(), c);
            }
            if status.phase == Some(RunPhase::Succeeded) {
                first(&mut seen.hub_done, run.metadata.name.unwrap_or_default());
            }
        }
    }));
    let records: Api<RunAssignment> = Api::all(hub);
    let s = seen.clone();
    let ns_owned = ns.to_owned();
    tasks.push(tokio::spawn(async move {
        let mut stream =
            std::pin::pin!(watcher(records, watcher::Config::default()).applied_objects());
        while let Some(Ok(r)) = stream.next().await {
            if r.spec.run.namespace == ns_owned
                && r.status.as_ref().is_some_and(|s| s.is_released())
            {
                first(&mut s.lock().unwrap().released, r.spec.run.name);
            }
        }
    }));
    for member in bed.members() {
        let api: Api<DynamicObject> = Api::namespaced_with(
            bed.client(&member).await.unwrap(),
            ns,
            &tekton_resource("TaskRun"),
        );
        let s = seen.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream =
                std::pin::pin!(watcher(api, watcher::Config::default()).applied_objects());
            while let Some(Ok(tr)) = stream.next().await {
                let name = tr.name_any();
                let done = tr.data["status"]["completionTime"].is_string();
                let mut seen = s.lock().unwrap();
                first(&mut seen.on_member, name.clone());
                if done {
                    first(&mut seen.member_done, name);
                }
            }
        }));
    }
    tasks
}

/// The spec of the main bursts' runs: an inline Task, nothing to carry.
fn inline_spec() -> Value {
    json!({"taskSpec": {"steps": [{"name": "s", "image": "alpine", "script": "true"}]}})
}

/// Create FederatedTaskRuns named `names` in `ns`, each with the TaskRun
/// spec `spec`, on any member; at `pace` apart if given, else at once
/// ([`CONCURRENCY`] in flight). How long creating took.
async fn create_runs(
    hub: &Client,
    ns: &str,
    names: &[String],
    pace: Option<Duration>,
    seen: &Shared,
    spec: &Value,
) -> Duration {
    let api: Api<FederatedTaskRun> = Api::namespaced(hub.clone(), ns);
    let began = Instant::now();
    let placement = json!({"clusterSelector": {"matchExpressions": [{"key": "tekfed.io/test-member", "operator": "Exists"}]}});
    let one = |name: String, at: Option<Instant>| {
        let (api, seen, placement, ns, spec) = (
            api.clone(),
            seen.clone(),
            placement.clone(),
            ns.to_owned(),
            spec.clone(),
        );
        async move {
            if let Some(at) = at {
                tokio::time::sleep_until(at.into()).await;
            }
            let run: FederatedTaskRun = serde_json::from_value(json!({
                "apiVersion": "tekfed.io/v1alpha1", "kind": "FederatedTaskRun",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"template": {"spec": spec}, "placement": placement},
            }))
            .expect("a valid FederatedTaskRun");
            match api.create(&PostParams::default(), &run).await {
                Ok(_) => first(&mut seen.lock().unwrap().created, name),
                Err(e) => eprintln!("bench: creating {name}: {e}"),
            }
        }
    };
    futures::stream::iter(
        names
            .iter()
            .enumerate()
            .map(|(i, n)| one(n.clone(), pace.map(|p| began + p * i as u32))),
    )
    .buffer_unordered(CONCURRENCY)
    .collect::<Vec<()>>()
    .await;
    began.elapsed()
}

/// Create `n` TaskRuns straight on the members, round robin, with the
/// bench's concurrency; then delete them. Creates per second.
async fn raw_creates(clients: &[Client], ns: &str, prefix: &str, n: usize) -> anyhow::Result<f64> {
    let began = Instant::now();
    futures::stream::iter((0..n).map(|i| {
        let client = clients[i % clients.len()].clone();
        let ns = ns.to_owned();
        async move {
            let api: Api<DynamicObject> =
                Api::namespaced_with(client, &ns, &tekton_resource("TaskRun"));
            let mut obj: DynamicObject =
                serde_json::from_value(task_run(&ns, &format!("{prefix}-{i:05}"), json!({})))
                    .expect("a valid TaskRun");
            obj.types = Some(kube::api::TypeMeta {
                api_version: "tekton.dev/v1".into(),
                kind: "TaskRun".into(),
            });
            if let Err(e) = api.create(&PostParams::default(), &obj).await {
                eprintln!("bench: raw create: {e}");
            }
        }
    }))
    .buffer_unordered(CONCURRENCY)
    .collect::<Vec<()>>()
    .await;
    let rate = n as f64 / began.elapsed().as_secs_f64();
    eprintln!("bench: {n} raw TaskRuns ({prefix}) at {rate:.0}/s; deleting them");
    // Delete them (a large collection can time out on a busy server: retry).
    for client in clients {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &tekton_resource("TaskRun"));
        for attempt in 1..=5 {
            match api
                .delete_collection(&DeleteParams::default(), &ListParams::default())
                .await
            {
                Ok(_) => break,
                Err(e) => eprintln!("bench: deleting raw TaskRuns (attempt {attempt}): {e}"),
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    Ok(rate)
}

/// Wait until `count` (how many of `total` are there) reaches `total`,
/// saying how far it got every ten seconds.
/// `perf record` with call graphs on `pid` into `path`, if perf runs here.
fn start_perf(pid: u32, path: &str) -> Option<std::process::Child> {
    std::process::Command::new("perf")
        .args([
            "record",
            "-F",
            "199",
            "--call-graph",
            "dwarf,16384",
            "-o",
            path,
            "-p",
        ])
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| eprintln!("bench: perf did not start: {e}"))
        .ok()
}

/// Stop a `perf record` and print what took the time (a function with
/// what it calls; above 4%).
fn stop_perf(child: std::process::Child, path: &str, title: &str) {
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.wait_with_output();
    let report = std::process::Command::new("perf")
        .args([
            "report",
            "-i",
            path,
            "--stdio",
            "--children",
            "--sort",
            "symbol",
            "--percent-limit",
            "4",
            "-g",
            "none",
        ])
        .output();
    if let Ok(out) = report {
        println!("\n{title} (perf, time in a function and what it calls):");
        for line in String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains('%'))
        {
            let words: Vec<&str> = line
                .split_whitespace()
                .filter(|w| *w != "-" && *w != "[.]" && *w != "[k]")
                .collect();
            println!("  {}", words.join(" "));
        }
    }
}

async fn wait_for(what: &str, timeout: Duration, total: usize, mut count: impl FnMut() -> usize) {
    let began = Instant::now();
    let mut said = began;
    loop {
        let n = count();
        if n >= total {
            return;
        }
        if began.elapsed() > timeout {
            panic!("bench: {what}: {n} of {total} after {timeout:?}");
        }
        if said.elapsed() >= Duration::from_secs(10) {
            eprintln!(
                "bench: {what}: {n} of {total} after {:.0} s",
                began.elapsed().as_secs_f64()
            );
            said = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes by each API server (hub and members), by cluster, then by
/// resource, subresource and verb.
async fn writes_by_cluster(bed: &TestBed) -> BTreeMap<String, BTreeMap<Write, u64>> {
    let mut by_cluster = BTreeMap::new();
    for cluster in bed.clusters() {
        let client = bed.client(&cluster.name).await.unwrap();
        by_cluster.insert(cluster.name.clone(), writes_by_resource(&client).await);
    }
    by_cluster
}

/// The writes of all clusters together.
fn summed<'a>(
    clusters: impl IntoIterator<Item = &'a BTreeMap<Write, u64>>,
) -> BTreeMap<Write, u64> {
    let mut total = BTreeMap::new();
    for writes in clusters {
        for (key, n) in writes {
            *total.entry(key.clone()).or_default() += n;
        }
    }
    total
}

/// Writes by all API servers (hub and members), by resource, subresource and verb.
async fn all_writes(bed: &TestBed) -> BTreeMap<Write, u64> {
    summed(writes_by_cluster(bed).await.values())
}

fn delta(after: &BTreeMap<Write, u64>, before: &BTreeMap<Write, u64>) -> BTreeMap<Write, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Whose the ServiceAccount writes in a window are.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ServiceAccounts {
    /// The member's controller-manager's: the `default` one in the
    /// namespace tekfed makes there (the main burst, whose runs name none).
    Members,
    /// tekfed's: the copies of the ServiceAccount the runs name (the
    /// dependency burst, whose namespace is on the members beforehand, so
    /// the controller-manager has nothing to write there).
    Carried,
}

/// Writes tekfed spent, by kind of write, and the user's creates of the
/// federated runs (not counted): all of `writes`, less those creates, what
/// Tekton and the member's own controllers write (run status and updates,
/// pods, bindings, events, ServiceAccounts unless tekfed carried them) and
/// the heartbeats (per cluster and time, not run).
fn tekfed_writes(
    writes: &BTreeMap<Write, u64>,
    service_accounts: ServiceAccounts,
) -> (BTreeMap<String, u64>, u64) {
    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    let mut user_creates = 0;
    for (w, n) in writes {
        let user =
            w.resource == "federatedtaskruns" && w.subresource.is_empty() && w.verb == "POST";
        let tekton = (matches!(w.resource.as_str(), "taskruns" | "pipelineruns")
            && (w.subresource == "status" || w.verb == "PUT"))
            || w.resource == "pods"
            || (w.resource == "serviceaccounts"
                && (service_accounts == ServiceAccounts::Members || !w.subresource.is_empty()));
        let heartbeat = w.resource == "memberreports"
            || w.resource == "memberclusters"
            || w.resource == "leases"
            || w.resource == "events";
        if user {
            user_creates += n;
        }
        if user || tekton || heartbeat {
            continue;
        }
        *by_kind.entry(w.to_string()).or_default() += n;
    }
    (by_kind, user_creates)
}

/// tekfed's label on everything it puts on a member.
const MANAGED: &str = "app.kubernetes.io/managed-by=tekfed";

/// The member resources a dependency-burst run needs, with how many
/// objects of each: a FederatedTask whose step uses a FederatedStepAction
/// (both on no member until a run needs them), a ServiceAccount with a git
/// Secret and an image pull Secret, a ConfigMap and a Secret workspace.
fn carried_kinds() -> [(ApiResource, u64); 5] {
    [
        (ApiResource::erase::<Secret>(&()), 3),
        (ApiResource::erase::<ConfigMap>(&()), 1),
        (ApiResource::erase::<ServiceAccount>(&()), 1),
        (tekton_resource("Task"), 1),
        (tekton_resource("StepAction"), 1),
    ]
}

/// The hub objects behind [`carried_kinds`], as (resource, object).
fn dependencies_on_the_hub() -> Vec<(ApiResource, Value)> {
    // Kept on no member by their own placement: only runs take them there.
    let nowhere = json!({"clusterSelector": {"matchLabels": {"tekfed.io/keep": "never"}}});
    let secret = ApiResource::erase::<Secret>(&());
    vec![
        (
            secret.clone(),
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "git-credentials", "annotations": {"tekton.dev/git-0": "https://github.com"}},
                   "type": "kubernetes.io/basic-auth",
                   "stringData": {"username": "ci-bot", "password": "not-a-real-token"}}),
        ),
        (
            secret.clone(),
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "registry"},
                   "type": "kubernetes.io/dockerconfigjson",
                   "stringData": {".dockerconfigjson": "{\"auths\":{\"registry.example\":{\"auth\":\"Y2k6cHc=\"}}}"}}),
        ),
        (
            secret,
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "signing-key"},
                   "stringData": {"key.pem": "-----BEGIN KEY-----"}}),
        ),
        (
            ApiResource::erase::<ServiceAccount>(&()),
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": "builder"},
                   "secrets": [{"name": "git-credentials"}],
                   "imagePullSecrets": [{"name": "registry"}]}),
        ),
        (
            ApiResource::erase::<ConfigMap>(&()),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "build-settings"},
                   "data": {"GOFLAGS": "-mod=vendor"}}),
        ),
        (
            ApiResource::erase::<FederatedStepAction>(&()),
            json!({"apiVersion": "tekfed.io/v1alpha1", "kind": "FederatedStepAction",
                   "metadata": {"name": "git-clone"},
                   "spec": {"template": {"spec": {"image": "alpine/git", "script": "git clone $URL ."}},
                            "placement": nowhere}}),
        ),
        (
            ApiResource::erase::<FederatedTask>(&()),
            json!({"apiVersion": "tekfed.io/v1alpha1", "kind": "FederatedTask",
                   "metadata": {"name": "build"},
                   "spec": {"template": {"spec": {
                       "workspaces": [{"name": "settings"}, {"name": "signing"}],
                       "steps": [{"name": "clone", "ref": {"name": "git-clone"}}]}},
                            "placement": nowhere}}),
        ),
    ]
}

/// The spec of a dependency-burst run: everything it uses is on the hub.
fn dependent_spec() -> Value {
    json!({
        "taskRef": {"name": "build"},
        "serviceAccountName": "builder",
        "workspaces": [
            {"name": "settings", "configMap": {"name": "build-settings"}},
            {"name": "signing", "secret": {"secretName": "signing-key"}},
        ],
    })
}

/// How many of tekfed's copies of the carried kinds are in `ns` on the members.
async fn copies_on_members(bed: &TestBed, ns: &str) -> usize {
    let mut n = 0;
    for member in bed.members() {
        let client = bed.client(&member).await.unwrap();
        for (resource, _) in carried_kinds() {
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
            n += api
                .list_metadata(&ListParams::default().labels(MANAGED))
                .await
                .map(|l| l.items.len())
                .unwrap_or(1);
        }
    }
    n
}

/// What the native-run burst measured.
struct NativeBurst {
    runs: usize,
    /// First create → every shadow has a cluster.
    scheduled_seconds: f64,
    /// First create → every native run's own status says Succeeded.
    done_seconds: f64,
    /// tekfed's writes (hub and members), the user's creates left out.
    writes_per_run: f64,
    /// Of those, the native runs' own status writes on the hub.
    native_status_writes_per_run: f64,
}

/// `runs` TaskRuns created on the hub with `spec.managedBy: tekfed.io/hub`
/// at once ([`CONCURRENCY`] in flight): when all are scheduled (their
/// shadows have a cluster) and shown Succeeded on the hub, and the writes
/// of hub and members over the window, counted as in 1 except that the
/// native runs' status writes on the hub (tekfed's here, not Tekton's) are
/// in.
async fn native_burst(bed: &TestBed, hub: &Client, runs: usize) -> anyhow::Result<NativeBurst> {
    let ns = bed.namespace("bench-native", &[HUB]).await?;
    let natives: Api<DynamicObject> =
        Api::namespaced_with(hub.clone(), &ns, &tekton_resource("TaskRun"));
    let shadows: Api<FederatedTaskRun> = Api::namespaced(hub.clone(), &ns);
    let before = writes_by_cluster(bed).await;
    let began = Instant::now();
    let placement = r#"{"clusterSelector": {"matchExpressions": [{"key": "tekfed.io/test-member", "operator": "Exists"}]}}"#;
    futures::stream::iter((0..runs).map(|i| {
        let (natives, ns) = (natives.clone(), ns.clone());
        async move {
            let run: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "tekton.dev/v1", "kind": "TaskRun",
                "metadata": {"name": format!("native-{i:05}"), "namespace": ns,
                             "annotations": {tekfed_api::native::ANNOTATION_PLACEMENT: placement}},
                "spec": {"managedBy": tekfed_api::native::MANAGED_BY_HUB,
                         "taskSpec": {"steps": [{"name": "s", "image": "alpine", "script": "true"}]}},
            }))
            .expect("a valid TaskRun");
            if let Err(e) = natives.create(&PostParams::default(), &run).await {
                eprintln!("bench: creating native run {i}: {e}");
            }
        }
    }))
    .buffer_unordered(CONCURRENCY)
    .collect::<Vec<()>>()
    .await;
    let (mut scheduled_at, mut done_at) = (None, None);
    let deadline = Duration::from_secs(120 + runs as u64 / 2);
    while done_at.is_none() && began.elapsed() < deadline {
        if scheduled_at.is_none() {
            let placed = shadows
                .list(&ListParams::default())
                .await?
                .items
                .iter()
                .filter(|r| r.status.as_ref().is_some_and(|s| s.cluster.is_some()))
                .count();
            if placed == runs {
                scheduled_at = Some(began.elapsed());
            }
        }
        let done = natives
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|r| r.data["status"]["conditions"][0]["status"] == "True")
            .count();
        if done == runs {
            done_at = Some(began.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let done = done_at.ok_or_else(|| {
        anyhow::anyhow!("native runs not all Succeeded on the hub after {deadline:?}")
    })?;
    let scheduled = scheduled_at.unwrap_or(done);
    // Writes settle (the last status writes) before counting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = writes_by_cluster(bed).await;
    let (mut tekfed, mut native_status) = (0, 0);
    for (cluster, writes) in &after {
        let writes = delta(writes, before.get(cluster).unwrap_or(&BTreeMap::new()));
        if cluster == HUB {
            for (w, n) in &writes {
                let user = w.resource == "taskruns" && w.subresource.is_empty() && w.verb == "POST";
                let heartbeat = matches!(
                    w.resource.as_str(),
                    "memberreports" | "memberclusters" | "leases" | "events"
                );
                if user || heartbeat {
                    continue;
                }
                if w.resource == "taskruns" && w.subresource == "status" {
                    native_status += n;
                }
                tekfed += n;
            }
        } else {
            let (by_kind, _) = tekfed_writes(&writes, ServiceAccounts::Members);
            tekfed += by_kind.values().sum::<u64>();
        }
    }
    Ok(NativeBurst {
        runs,
        scheduled_seconds: scheduled.as_secs_f64(),
        done_seconds: done.as_secs_f64(),
        writes_per_run: tekfed as f64 / runs as f64,
        native_status_writes_per_run: native_status as f64 / runs as f64,
    })
}

/// What the dependency burst measured.
struct DependencyBurst {
    runs: usize,
    /// Objects each run needs (all runs need the same ones).
    objects: u64,
    /// Members that ran at least one of the runs.
    members_used: usize,
    /// tekfed's writes in the window, counted as for the main burst.
    by_kind: BTreeMap<String, u64>,
    user_creates: u64,
    /// Writes on the members to the carried kinds, by kind of write.
    member_writes: BTreeMap<String, u64>,
    /// Of those: applies (creates, updates, patches) and deletes.
    applied: u64,
    removed: u64,
    /// First create → last run shown Succeeded on the hub.
    runs_seconds: f64,
    /// Last run shown Succeeded → no copy left on any member; `None` when
    /// some were still there at the end of the window.
    removal_seconds: Option<f64>,
    /// First create → the writes were counted.
    window_seconds: f64,
}

/// How long after the last run finished the window waits for the copies
/// to leave (the sweep runs every 10 s and when a run finishes).
const REMOVAL_WAIT: Duration = Duration::from_secs(60);

/// `runs` FederatedTaskRuns at once, each needing the same seven hub
/// objects, in a fresh namespace labelled so Secrets may travel. The window
/// whose writes are counted opens just before the first create and closes
/// 3 s (writes settle, as for the main burst) after every copy has left
/// every member, or [`REMOVAL_WAIT`] after the last run finished if some
/// have not: the carrying during the runs and the removals after them are
/// both in it. The namespace is made on the members too, beforehand, and
/// the hub objects a few seconds before the window: neither the user's
/// creates nor the member controller-manager's writes for a new namespace
/// (its `default` ServiceAccount and `kube-root-ca.crt` ConfigMap) are in
/// it, so every ServiceAccount or ConfigMap written on a member there is
/// tekfed's. (The main burst's window has tekfed make its namespace on the
/// members: 3 writes over its runs.)
async fn dependency_burst(
    bed: &TestBed,
    hub: &Client,
    runs: usize,
) -> anyhow::Result<DependencyBurst> {
    let members = bed.members();
    let clusters: Vec<&str> = std::iter::once(HUB)
        .chain(members.iter().map(String::as_str))
        .collect();
    let ns = bed.namespace("bench-deps", &clusters).await?;
    Api::<Namespace>::all(hub.clone())
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {LABEL_CARRY_SECRETS: "true"}}})),
        )
        .await?;
    let objects = dependencies_on_the_hub();
    for (resource, object) in &objects {
        let api: Api<DynamicObject> = Api::namespaced_with(hub.clone(), &ns, resource);
        api.create(
            &PostParams::default(),
            &serde_json::from_value(object.clone())?,
        )
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "creating {} {} on the hub: {e}",
                resource.kind,
                object["metadata"]["name"]
            )
        })?;
    }
    // The member's controller-manager fills the new namespace in.
    let mut filled = 0;
    let waited = Instant::now();
    while filled < members.len() && waited.elapsed() < Duration::from_secs(60) {
        filled = 0;
        for member in &members {
            let client = bed.client(member).await?;
            let sa = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
                .get_opt("default")
                .await?;
            let ca = Api::<ConfigMap>::namespaced(client, &ns)
                .get_opt("kube-root-ca.crt")
                .await?;
            filled += usize::from(sa.is_some() && ca.is_some());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The hub's watches see the objects and its template reconciles settle.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(waited.elapsed())).await;

    let seen: Shared = Arc::default();
    let watches = watch_all(bed, &ns, seen.clone()).await;
    let before = writes_by_cluster(bed).await;
    let names: Vec<String> = (0..runs).map(|i| format!("deps-{i:05}")).collect();
    let began = Instant::now();
    create_runs(hub, &ns, &names, None, &seen, &dependent_spec()).await;
    wait_for(
        "every dependency run shown Succeeded on the hub",
        Duration::from_secs(60 + runs as u64 / 5),
        names.len(),
        || {
            let s = seen.lock().unwrap();
            names.iter().filter(|n| s.hub_done.contains_key(*n)).count()
        },
    )
    .await;
    let (last_done, members_used) = {
        let s = seen.lock().unwrap();
        let last = names
            .iter()
            .filter_map(|n| s.hub_done.get(n))
            .max()
            .copied();
        let used: std::collections::BTreeSet<&String> =
            names.iter().filter_map(|n| s.cluster.get(n)).collect();
        (last.unwrap_or_else(Instant::now), used.len())
    };
    for w in watches {
        w.abort();
    }
    let mut removal_seconds = None;
    while last_done.elapsed() < REMOVAL_WAIT {
        if copies_on_members(bed, &ns).await == 0 {
            removal_seconds = Some(last_done.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if removal_seconds.is_none() {
        eprintln!(
            "bench: copies still on the members {REMOVAL_WAIT:?} after the last dependency run finished"
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = writes_by_cluster(bed).await;
    let window_seconds = began.elapsed().as_secs_f64();

    let all = delta(&summed(after.values()), &summed(before.values()));
    let (by_kind, user_creates) = tekfed_writes(&all, ServiceAccounts::Carried);
    let kinds = carried_kinds();
    let mut member_writes: BTreeMap<String, u64> = BTreeMap::new();
    let (mut applied, mut removed) = (0, 0);
    let empty = BTreeMap::new();
    for member in &members {
        let writes = delta(
            after.get(member).unwrap_or(&empty),
            before.get(member).unwrap_or(&empty),
        );
        for (w, n) in writes {
            if !w.subresource.is_empty() || !kinds.iter().any(|(r, _)| r.plural == w.resource) {
                continue;
            }
            if w.verb == "DELETE" {
                removed += n;
            } else {
                applied += n;
            }
            *member_writes.entry(w.to_string()).or_default() += n;
        }
    }
    Ok(DependencyBurst {
        runs,
        objects: kinds.iter().map(|(_, n)| n).sum(),
        members_used,
        by_kind,
        user_creates,
        member_writes,
        applied,
        removed,
        runs_seconds: last_done.duration_since(began).as_secs_f64(),
        removal_seconds,
        window_seconds,
    })
}

/// Resident memory (bytes) and CPU seconds of a process, from /proc.
fn proc_usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15; after the ')' they are 12 and 13.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum();
    (rss, ticks / 100.0)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn row(table: &mut Vec<(String, String)>, k: &str, v: String) {
    table.push((k.to_owned(), v));
}

fn print_table(title: &str, rows: &[(String, String)]) {
    println!("\n{title}");
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        println!("  {k:<w$}  {v}");
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mut mode = if args.iter().any(|a| a == "--full") {
        FULL
    } else {
        QUICK
    };
    // --burst N: another burst size (to profile how the hub scales); the
    // dependency burst takes at most as many runs.
    if let Some(n) = args
        .iter()
        .position(|a| a == "--burst")
        .and_then(|i| args.get(i + 1)?.parse().ok())
    {
        mode.burst = n;
        mode.stored = mode.stored.max(n + mode.half_rate + mode.balance);
        mode.deps = mode.deps.min(n);
    }
    let json_path = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| "target/bench/results.json".into());
    let mut results = serde_json::Map::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!("tekfed bench, {} mode, on {cores} cores ({cpu})", mode.name);
    results.insert("mode".into(), json!(mode.name));
    results.insert("machine_cores".into(), json!(cores));
    results.insert("machine_cpu".into(), json!(cpu));
    let began = Instant::now();

    let bed = TestBed::start(3).await?;
    let hub = bed.client(HUB).await?;

    // --- baseline: the raw write rate of the member API servers -------------
    let raw_ns = bed
        .namespace("raw", &["member-1", "member-2", "member-3"])
        .await?;
    let members = bed.members();
    let mut member_clients = Vec::new();
    for m in &members {
        member_clients.push(bed.client(m).await?);
    }
    // Warm the servers up (first requests of a kind are slower), untimed.
    raw_creates(&member_clients, &raw_ns, "warm", 60).await?;
    let raw_before = raw_creates(&member_clients, &raw_ns, "before", mode.burst).await?;

    // --- tekfed ---------------------------------------------------------------
    // Tekton's CRDs on the hub, for the native runs of 1c.
    bed.install_tekton_on_hub().await?;
    // Every run stays stored: the figures at rest are for that many.
    federate(
        &bed,
        &["--heartbeat-grace", "30", "--finished-run-history", "0"],
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let hub_pid = bed.pid_of("tekfed-hub").expect("the hub runs");
    let ns = bed.namespace("bench", &[HUB]).await?;
    let seen: Shared = Arc::default();
    let watches = watch_all(&bed, &ns, seen.clone()).await;
    let writes_before = all_writes(&bed).await;
    let hub_writes_before: u64 = writes_by_resource(&hub).await.values().sum();
    let (_, cpu_before) = proc_usage(hub_pid);
    let peak_rss = Arc::new(Mutex::new(0u64));
    let sampler = {
        let peak = peak_rss.clone();
        tokio::spawn(async move {
            loop {
                let (rss, _) = proc_usage(hub_pid);
                {
                    let mut p = peak.lock().unwrap();
                    *p = (*p).max(rss);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let names: Vec<String> = (0..mode.burst).map(|i| format!("burst-{i:05}")).collect();
    // --profile: sample the hub with perf for the burst (and at rest).
    let profiling = args.iter().any(|a| a == "--profile");
    let profile = profiling.then(|| start_perf(hub_pid, "target/bench/hub.perf.data"));
    let burst_began = Instant::now();
    let create_time = create_runs(&hub, &ns, &names, None, &seen, &inline_spec()).await;
    let timeout = Duration::from_secs(60 + mode.burst as u64 / 5);
    wait_for(
        "every burst run released on a member",
        timeout,
        names.len(),
        || {
            let s = seen.lock().unwrap();
            names.iter().filter(|n| s.released.contains_key(*n)).count()
        },
    )
    .await;
    let last_released = {
        let s = seen.lock().unwrap();
        names
            .iter()
            .filter_map(|n| s.released.get(n))
            .max()
            .copied()
            .unwrap()
    };
    let dispatch_elapsed = last_released.duration_since(burst_began).as_secs_f64();
    let tekfed_rate = mode.burst as f64 / dispatch_elapsed;
    wait_for(
        "every burst run shown Succeeded on the hub",
        timeout,
        names.len(),
        || {
            let s = seen.lock().unwrap();
            names.iter().filter(|n| s.hub_done.contains_key(*n)).count()
        },
    )
    .await;
    let burst_total = burst_began.elapsed().as_secs_f64();
    if let Some(Some(child)) = profile {
        stop_perf(
            child,
            "target/bench/hub.perf.data",
            "hub profile during the burst",
        );
    }
    // Writes settle (the last status writes) before counting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes = delta(&all_writes(&bed).await, &writes_before);
    // The hub's API server takes every create and most of tekfed's writes:
    // how close it ran to one API server's raw rate (one member's share).
    let hub_writes: u64 = writes_by_resource(&hub).await.values().sum::<u64>() - hub_writes_before;
    let hub_window = burst_began.elapsed().as_secs_f64();
    let (_, cpu_after) = proc_usage(hub_pid);
    sampler.abort();
    let burst_peak_rss = *peak_rss.lock().unwrap();

    let (by_kind, user_creates) = tekfed_writes(&writes, ServiceAccounts::Members);
    let tekfed_writes: u64 = by_kind.values().sum();
    let writes_per_run = tekfed_writes as f64 / mode.burst as f64;
    // The same measure again, with the federation running beside it (its
    // members' Tekton now also runs the raw runs); the
    // higher of the two is the baseline, which makes efficiency the lower.
    let raw_after = raw_creates(&member_clients, &raw_ns, "after", mode.burst).await?;
    let raw_rate = raw_before.max(raw_after);
    let efficiency = tekfed_rate * writes_per_run / raw_rate;
    // Averaged from the first create until the writes settled.
    let hub_write_rate = hub_writes as f64 / hub_window;

    let (lat_exists, lat_released, lat_status) = {
        let s = seen.lock().unwrap();
        let since_create = |m: &HashMap<String, Instant>| -> Vec<f64> {
            names
                .iter()
                .filter_map(|n| {
                    Some(m.get(n)?.duration_since(*s.created.get(n)?).as_secs_f64() * 1000.0)
                })
                .collect()
        };
        let status: Vec<f64> = names
            .iter()
            .filter_map(|n| {
                Some(
                    s.hub_done
                        .get(n)?
                        .duration_since(*s.member_done.get(n)?)
                        .as_secs_f64()
                        * 1000.0,
                )
            })
            .collect();
        (
            stats(since_create(&s.on_member)),
            stats(since_create(&s.released)),
            stats(status),
        )
    };
    let equal_balance = {
        let s = seen.lock().unwrap();
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for n in &names {
            if let Some(c) = s.cluster.get(n) {
                *per.entry(c.clone()).or_default() += 1;
            }
        }
        per
    };

    // --- latency at half the peak rate ---------------------------------------
    let half: Vec<String> = (0..mode.half_rate)
        .map(|i| format!("half-{i:05}"))
        .collect();
    let pace = Duration::from_secs_f64(2.0 / tekfed_rate);
    create_runs(&hub, &ns, &half, Some(pace), &seen, &inline_spec()).await;
    wait_for("every half-rate run released", timeout, half.len(), || {
        let s = seen.lock().unwrap();
        half.iter().filter(|n| s.released.contains_key(*n)).count()
    })
    .await;
    let (lat_half, lat_half_exists) = {
        let s = seen.lock().unwrap();
        let since_create = |m: &HashMap<String, Instant>| -> Vec<f64> {
            half.iter()
                .filter_map(|n| {
                    Some(m.get(n)?.duration_since(*s.created.get(n)?).as_secs_f64() * 1000.0)
                })
                .collect()
        };
        (
            stats(since_create(&s.released)),
            stats(since_create(&s.on_member)),
        )
    };

    // --- balance with unequal capacities --------------------------------------
    let clusters: Api<MemberCluster> = Api::all(hub.clone());
    let caps = [2, 4, 8];
    for (m, cap) in members.iter().zip(caps) {
        let patch = json!({"spec": {"maxConcurrentRuns": cap}});
        clusters
            .patch(m, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let bal: Vec<String> = (0..mode.balance).map(|i| format!("cap-{i:05}")).collect();
    create_runs(&hub, &ns, &bal, None, &seen, &inline_spec()).await;
    // At most 14 run at once here: a second per run, and never less than
    // the burst's (which a small --burst makes too short for these).
    let bal_timeout = timeout.max(Duration::from_secs(60 + bal.len() as u64));
    wait_for("every capacity run done", bal_timeout, bal.len(), || {
        let s = seen.lock().unwrap();
        bal.iter().filter(|n| s.hub_done.contains_key(*n)).count()
    })
    .await;
    let unequal_balance = {
        let s = seen.lock().unwrap();
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for n in &bal {
            if let Some(c) = s.cluster.get(n) {
                *per.entry(c.clone()).or_default() += 1;
            }
        }
        per
    };
    for m in &members {
        let patch = json!({"spec": {"maxConcurrentRuns": null}});
        clusters
            .patch(m, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }

    // --- hub at rest with the runs stored --------------------------------------
    let stored_so_far = mode.burst + mode.half_rate + mode.balance;
    let filler: Vec<String> = (stored_so_far..mode.stored)
        .map(|i| format!("fill-{i:05}"))
        .collect();
    if !filler.is_empty() {
        create_runs(&hub, &ns, &filler, None, &seen, &inline_spec()).await;
        wait_for(
            "every filler run done",
            // A second per run: only how long before giving up (on a busy
            // machine, a debug build, five a second was too few).
            Duration::from_secs(60 + filler.len() as u64),
            filler.len(),
            || {
                let s = seen.lock().unwrap();
                filler
                    .iter()
                    .filter(|n| s.hub_done.contains_key(*n))
                    .count()
            },
        )
        .await;
    }
    for w in watches {
        w.abort();
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rest_profile = profiling.then(|| start_perf(hub_pid, "target/bench/hub-rest.perf.data"));
    let (rest_rss_0, rest_cpu_0) = proc_usage(hub_pid);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (rest_rss, rest_cpu_1) = proc_usage(hub_pid);
    if let Some(Some(child)) = rest_profile {
        stop_perf(
            child,
            "target/bench/hub-rest.perf.data",
            "hub profile at rest",
        );
    }
    let stored = Api::<FederatedTaskRun>::namespaced(hub.clone(), &ns)
        .list_metadata(&ListParams::default())
        .await?
        .items
        .len();

    // --- runs with dependencies to carry (last: nothing above sees them) ----
    let deps = dependency_burst(&bed, &hub, mode.deps).await?;
    let native = native_burst(&bed, &hub, mode.deps).await?;

    // --- report -----------------------------------------------------------------
    let mut t = Vec::new();
    row(&mut t, "runs", format!("{}", mode.burst));
    row(&mut t, "concurrency (both)", format!("{CONCURRENCY}"));
    row(
        &mut t,
        "raw TaskRun creates on the members",
        format!(
            "{raw_rate:.0} writes/s (best of {raw_before:.0} before and {raw_after:.0} beside tekfed)"
        ),
    );
    row(
        &mut t,
        "tekfed: create -> last member run released",
        format!(
            "{tekfed_rate:.1} runs/s ({dispatch_elapsed:.1}s; creating took {:.1}s)",
            create_time.as_secs_f64()
        ),
    );
    row(
        &mut t,
        "tekfed: all shown Succeeded on the hub",
        format!("{burst_total:.1}s"),
    );
    row(
        &mut t,
        "latency create -> released p50/p95/p99",
        format!(
            "{:.0} / {:.0} / {:.0} ms",
            lat_released.0, lat_released.1, lat_released.2
        ),
    );
    row(
        &mut t,
        "latency create -> member run exists p50/p95/p99",
        format!(
            "{:.0} / {:.0} / {:.0} ms",
            lat_exists.0, lat_exists.1, lat_exists.2
        ),
    );
    row(
        &mut t,
        "writes per run (tekfed, hub + members)",
        format!("{writes_per_run:.2}"),
    );
    for (k, n) in &by_kind {
        row(
            &mut t,
            &format!("  {k}"),
            format!("{:.2}/run", *n as f64 / mode.burst as f64),
        );
    }
    row(
        &mut t,
        "  (not counted: user's creates)",
        format!("{user_creates}"),
    );
    row(
        &mut t,
        "write efficiency",
        format!("{efficiency:.3} (runs/s x writes/run / raw writes/s)"),
    );
    row(
        &mut t,
        &format!(
            "latency at half rate ({:.1} runs/s) p50/p95/p99",
            tekfed_rate / 2.0
        ),
        format!(
            "{:.0} / {:.0} / {:.0} ms",
            lat_half.0, lat_half.1, lat_half.2
        ),
    );
    row(
        &mut t,
        "  the same, create -> member run exists (TaskRuns are created once released)",
        format!(
            "{:.0} / {:.0} / {:.0} ms",
            lat_half_exists.0, lat_half_exists.1, lat_half_exists.2
        ),
    );
    row(
        &mut t,
        "hub API server during the burst (creates + tekfed)",
        format!(
            "{hub_write_rate:.0} writes/s ({:.2} of one member server's raw rate, {:.0}/s)",
            hub_write_rate / (raw_rate / members.len() as f64),
            raw_rate / members.len() as f64
        ),
    );
    print_table(
        "1. Dispatch throughput and latency (hub + 3 members, each with real Tekton)",
        &t,
    );

    let deps_writes: u64 = deps.by_kind.values().sum();
    let deps_writes_per_run = deps_writes as f64 / deps.runs as f64;
    // Each object once per member that ran these runs, and once away again.
    let copies = (deps.objects * deps.members_used as u64).max(1) as f64;
    let mut t = Vec::new();
    row(
        &mut t,
        "runs",
        format!(
            "{} at once, each needing a Task, its StepAction, a ServiceAccount with a Secret and an image pull Secret, a ConfigMap and a Secret workspace ({} objects, all on the hub only); ran on {} members",
            deps.runs, deps.objects, deps.members_used
        ),
    );
    row(
        &mut t,
        "window",
        format!(
            "first create -> every copy gone from the members (at most {}s after the last run finished) + 3s: {:.1}s (runs shown Succeeded after {:.1}s)",
            REMOVAL_WAIT.as_secs(),
            deps.window_seconds,
            deps.runs_seconds
        ),
    );
    row(
        &mut t,
        "writes per run, no dependencies",
        format!("{writes_per_run:.2} (the burst in 1, {} runs)", mode.burst),
    );
    row(
        &mut t,
        &format!("writes per run, with {} dependencies carried", deps.objects),
        format!("{deps_writes_per_run:.2} (counted as in 1, over the window)"),
    );
    for (k, n) in &deps.by_kind {
        row(
            &mut t,
            &format!("  {k}"),
            format!("{:.2}/run", *n as f64 / deps.runs as f64),
        );
    }
    row(
        &mut t,
        "  (not counted: user's creates)",
        format!("{}", deps.user_creates),
    );
    row(
        &mut t,
        "writes on the members to the carried kinds",
        format!(
            "{} applied + {} removed = {:.2} + {:.2} per object per member that ran the runs; one apply and one removal each when what is already there costs no write ({:.2}/run here: per member, not per run, so a larger burst spreads it thinner)",
            deps.applied,
            deps.removed,
            deps.applied as f64 / copies,
            deps.removed as f64 / copies,
            (deps.applied + deps.removed) as f64 / deps.runs as f64
        ),
    );
    for (k, n) in &deps.member_writes {
        row(
            &mut t,
            &format!("  {k}"),
            format!(
                "{n} ({:.2} per member)",
                *n as f64 / deps.members_used.max(1) as f64
            ),
        );
    }
    row(
        &mut t,
        "copies gone from the members after the last run finished",
        match deps.removal_seconds {
            Some(s) => format!("{s:.1}s"),
            None => format!(
                "not all within {}s: later removals are not counted",
                REMOVAL_WAIT.as_secs()
            ),
        },
    );
    print_table(
        "1b. Writes per run with dependencies to carry (one more burst, same bed, at the end)",
        &t,
    );

    let mut t = Vec::new();
    row(
        &mut t,
        "runs",
        format!(
            "{} Tekton TaskRuns created on the hub with spec.managedBy: tekfed.io/hub, at once ({CONCURRENCY} in flight)",
            native.runs
        ),
    );
    row(
        &mut t,
        "all scheduled (shadows have a cluster)",
        format!(
            "{:.1}s ({:.1} runs/s)",
            native.scheduled_seconds,
            native.runs as f64 / native.scheduled_seconds.max(0.001)
        ),
    );
    row(
        &mut t,
        "all shown Succeeded in their own status on the hub",
        format!(
            "{:.1}s ({:.1} runs/s)",
            native.done_seconds,
            native.runs as f64 / native.done_seconds.max(0.001)
        ),
    );
    row(
        &mut t,
        "writes per run, native",
        format!(
            "{:.2} (of which the native run's own status on the hub: {:.2})",
            native.writes_per_run, native.native_status_writes_per_run
        ),
    );
    row(
        &mut t,
        "writes per run, FederatedTaskRun",
        format!("{writes_per_run:.2} (the burst in 1, {} runs)", mode.burst),
    );
    print_table(
        "1c. Native runs beside FederatedTaskRuns (same bed, at the end)",
        &t,
    );

    let mut t = Vec::new();
    row(
        &mut t,
        "member run done -> hub shows Succeeded p50/p95/p99",
        format!(
            "{:.0} / {:.0} / {:.0} ms",
            lat_status.0, lat_status.1, lat_status.2
        ),
    );
    print_table("2. Status latency (over the burst)", &t);

    let ratio = |per: &BTreeMap<String, usize>, weights: &[f64]| -> f64 {
        let norm: Vec<f64> = members
            .iter()
            .zip(weights)
            .map(|(m, w)| per.get(m).copied().unwrap_or(0) as f64 / w)
            .collect();
        let mean = norm.iter().sum::<f64>() / norm.len() as f64;
        norm.iter().cloned().fold(0.0, f64::max) / mean
    };
    let equal_ratio = ratio(&equal_balance, &[1.0, 1.0, 1.0]);
    let unequal_ratio = ratio(&unequal_balance, &caps.map(|c| c as f64));
    let mut t = Vec::new();
    row(
        &mut t,
        "equal members: runs per cluster",
        format!("{equal_balance:?}, max/mean {equal_ratio:.3}"),
    );
    row(
        &mut t,
        "maxConcurrentRuns 2/4/8: runs per cluster",
        format!("{unequal_balance:?}, max/mean per unit of capacity {unequal_ratio:.3}"),
    );
    print_table("3. Balance", &t);

    let burst_cpu = cpu_after - cpu_before;
    let rest_cpu = (rest_cpu_1 - rest_cpu_0) / 10.0;
    let mut t = Vec::new();
    row(
        &mut t,
        "hub peak RSS during the burst",
        format!("{:.1} MiB", mib(burst_peak_rss)),
    );
    row(
        &mut t,
        "hub CPU during the burst",
        format!(
            "{burst_cpu:.2} s ({:.2} ms/run)",
            burst_cpu * 1000.0 / mode.burst as f64
        ),
    );
    row(
        &mut t,
        &format!("hub RSS at rest, {stored} completed runs stored"),
        format!("{:.1} MiB", mib(rest_rss.max(rest_rss_0))),
    );
    row(
        &mut t,
        "hub CPU at rest",
        format!("{:.3} s per s", rest_cpu),
    );
    print_table("5. Hub footprint", &t);

    let mut t = Vec::new();
    row(
        &mut t,
        "per-cluster and hub clients",
        "kube-rs: no client-side QPS/burst limit (client-go defaults to 5 QPS / 10 burst)".into(),
    );
    row(&mut t, "hub concurrency", "dispatcher: 32 status writes in flight; run controllers: one reconcile per run at a time, unbounded across runs".into());
    print_table("6. Client rate limits", &t);

    let put = |r: &mut serde_json::Map<String, Value>, k: &str, v: Value| {
        r.insert(k.into(), v);
    };
    put(&mut results, "runs", json!(mode.burst));
    put(&mut results, "concurrency", json!(CONCURRENCY));
    put(&mut results, "raw_writes_per_s", json!(raw_rate));
    put(&mut results, "raw_writes_per_s_before", json!(raw_before));
    put(&mut results, "raw_writes_per_s_after", json!(raw_after));
    put(&mut results, "dispatch_runs_per_s", json!(tekfed_rate));
    put(&mut results, "dispatch_seconds", json!(dispatch_elapsed));
    put(
        &mut results,
        "latency_released_ms",
        json!({"p50": lat_released.0, "p95": lat_released.1, "p99": lat_released.2}),
    );
    put(
        &mut results,
        "latency_member_run_exists_ms",
        json!({"p50": lat_exists.0, "p95": lat_exists.1, "p99": lat_exists.2}),
    );
    put(
        &mut results,
        "latency_half_rate_released_ms",
        json!({"p50": lat_half.0, "p95": lat_half.1, "p99": lat_half.2, "rate_runs_per_s": tekfed_rate / 2.0}),
    );
    put(
        &mut results,
        "latency_half_rate_member_run_exists_ms",
        json!({"p50": lat_half_exists.0, "p95": lat_half_exists.1, "p99": lat_half_exists.2}),
    );
    put(&mut results, "hub_api_writes_per_s", json!(hub_write_rate));
    put(&mut results, "writes_per_run", json!(writes_per_run));
    put(
        &mut results,
        "writes_per_run_by_kind",
        json!(
            by_kind
                .iter()
                .map(|(k, n)| (k.clone(), *n as f64 / mode.burst as f64))
                .collect::<BTreeMap<_, _>>()
        ),
    );
    put(&mut results, "write_efficiency", json!(efficiency));
    put(
        &mut results,
        "writes_per_run_with_dependencies",
        json!(deps_writes_per_run),
    );
    put(
        &mut results,
        "native_burst",
        json!({
            "runs": native.runs,
            "scheduled_seconds": native.scheduled_seconds,
            "succeeded_seconds": native.done_seconds,
            "writes_per_run": native.writes_per_run,
            "native_status_writes_per_run": native.native_status_writes_per_run,
            "writes_per_run_federated": writes_per_run,
        }),
    );
    put(
        &mut results,
        "dependency_burst",
        json!({
            "runs": deps.runs,
            "objects_per_run": deps.objects,
            "members_used": deps.members_used,
            "window": format!("first create -> every copy gone from the members (at most {}s after the last run finished) + 3s", REMOVAL_WAIT.as_secs()),
            "window_seconds": deps.window_seconds,
            "runs_succeeded_seconds": deps.runs_seconds,
            "copies_gone_seconds_after_last_run": deps.removal_seconds,
            "writes_per_run_no_dependencies": writes_per_run,
            "writes_per_run": deps_writes_per_run,
            "writes_per_run_by_kind": deps
                .by_kind
                .iter()
                .map(|(k, n)| (k.clone(), *n as f64 / deps.runs as f64))
                .collect::<BTreeMap<_, _>>(),
            "member_writes_to_carried_kinds": deps.member_writes,
            "applied": deps.applied,
            "removed": deps.removed,
            "applied_per_object_per_member": deps.applied as f64 / copies,
            "removed_per_object_per_member": deps.removed as f64 / copies,
        }),
    );
    put(
        &mut results,
        "status_latency_ms",
        json!({"p50": lat_status.0, "p95": lat_status.1, "p99": lat_status.2}),
    );
    put(
        &mut results,
        "balance_equal",
        json!({"per_cluster": equal_balance, "max_over_mean": equal_ratio}),
    );
    put(
        &mut results,
        "balance_unequal",
        json!({"capacities": caps, "per_cluster": unequal_balance, "max_over_mean_per_capacity": unequal_ratio}),
    );
    put(
        &mut results,
        "hub_burst_peak_rss_mib",
        json!(mib(burst_peak_rss)),
    );
    put(&mut results, "hub_burst_cpu_seconds", json!(burst_cpu));
    put(
        &mut results,
        "hub_rest_rss_mib",
        json!(mib(rest_rss.max(rest_rss_0))),
    );
    put(
        &mut results,
        "hub_rest_cpu_seconds_per_second",
        json!(rest_cpu),
    );
    put(&mut results, "hub_rest_runs_stored", json!(stored));
    put(&mut results, "client_rate_limit", json!("none (kube-rs)"));
    let scheduler = std::path::Path::new(&json_path).with_file_name("scheduler.json");
    if let Ok(text) = std::fs::read_to_string(&scheduler)
        && let Ok(Value::Object(s)) = serde_json::from_str::<Value>(&text)
    {
        results.extend(s);
    }
    put(
        &mut results,
        "bench_seconds",
        json!(began.elapsed().as_secs_f64()),
    );
    if let Some(dir) = std::path::Path::new(&json_path).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&Value::Object(results))?,
    )?;
    println!(
        "\nwrote {json_path} ({:.0}s)",
        began.elapsed().as_secs_f64()
    );
    Ok(())
}
