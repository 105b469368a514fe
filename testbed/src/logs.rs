//! Container logs on the members: `kubectl logs` and the `pods/log`
//! subresource work as on a real cluster, served by kwok from files the way
//! a kubelet serves a container runtime's log files.
//!
//! What a step prints is up to the test: the value of the step's
//! environment variable [`TEST_LOG_ENV`] (Tekton copies a step's `env` onto
//! its container), one log line per line. Every other container prints
//! nothing: its log is empty.
//!
//! How the pieces fit:
//! - kwok serves the kubelet's `containerLogs` on `127.0.0.1:<port>` (its
//!   `serverAddress`), and its node-initialize stage gives the Node the
//!   address `InternalIP 127.0.0.1` (`nodeIP`) and that port as
//!   `daemonEndpoints.kubeletEndpoint.Port` (`nodePort`). The member's API
//!   server dials it over HTTPS as it dials any kubelet: its default
//!   address types pick the `InternalIP` (kwok adds no `Hostname` address
//!   when `nodeName` is unset); with no `--kubelet-certificate-authority`
//!   it does not verify kwok's self-signed certificate, and kwok asks for
//!   no client certificate. No API server flag is needed.
//!   kwok serves `containerLogs` only if `enableDebuggingHandlers` is
//!   `true`, and that must be written out: a configuration read from
//!   `--config` gets none of the defaults kwok documents (this one says
//!   `true`), no flag sets it, and without it kwok answers 405 "Debug
//!   endpoints are disabled".
//! - kwok finds a container's log file through a namespaced `Logs` object
//!   (`kwok.x-k8s.io/v1alpha1`) named after the pod, which it watches when
//!   `enableCRDs` lists `Logs` (the CRD comes from kwok's module, copied by
//!   `hack/k8s-bins.sh`); kwok cannot derive a file name from the pod, so
//!   one object per pod is needed. A `ClusterLogs` in kwok's configuration
//!   points every other container to an empty file.
//! - A watcher of the member's pods, a thread of the test process, writes
//!   the file of each container that has [`TEST_LOG_ENV`] in the CRI log
//!   format (what kwok parses) and creates the pod's `Logs` object (owned
//!   by the pod, so the garbage collector removes it with the pod). kwok
//!   learns of that object through a watch of its own, and on a new test
//!   bed its first list of the fresh CRD takes about a second; until then
//!   it serves the empty log. So the watcher reads the log back through
//!   the member's API server until it is as written, and only then
//!   annotates the pod [`ANNOTATION_LOGS_READY`]. kwok ends such a pod
//!   only once it is annotated (`testbed/kwok/tekton-pods.yaml`): once a
//!   step has terminated, its log is there to read (while it runs, it may
//!   still read empty). Pods without the variable cost the watcher nothing
//!   but the watch event, and are not held back.
//!
//! A `follow` stream does not end when the container does: kwok v0.8.0
//! tells its log reader that every container is still running, so the
//! stream stays open, waiting for more lines, until the client closes it.
//! Read without `follow`, or drop the stream once the lines are in.
//!
//! The watcher stops once the test bed's folder is gone (`TestBed`'s drop
//! stops the servers, then removes it); it never creates that folder, so it
//! cannot bring it back.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, LogParams, Patch, PatchParams};
use kube::discovery::ApiResource;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Config, ResourceExt};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::testbed::read_yaml;
use crate::{POLL_INTERVAL, TestBedError};

/// The environment variable of a step (a container) whose value is what
/// the step prints: each line of it is a line of the container's log, on
/// stdout.
pub const TEST_LOG_ENV: &str = "TEKFED_TEST_LOG";
/// Set on a pod once its containers' logs are served; kwok ends a pod that
/// has [`TEST_LOG_ENV`] on a container only once it is set.
pub const ANNOTATION_LOGS_READY: &str = "tekfed.io/test-logs";
/// kwok's `Logs` CRD in the bin folder (see `hack/k8s-bins.sh`).
const LOGS_CRD: &str = "kwok-crds/kwok.x-k8s.io_logs.yaml";
/// The log of every container that prints nothing.
const EMPTY_LOG: &str = "empty.log";
const MANAGER: &str = "tekfed-testbed";
/// How often the watcher retries a pod it could not serve, and checks that
/// the test bed is still there.
const TICK: Duration = Duration::from_secs(1);
/// How long a pod's logs may take to be served once its `Logs` object is
/// made (the pod must be bound first); then the watcher tries again.
const SERVE_TIMEOUT: Duration = Duration::from_secs(60);

/// The folder with a member's container logs, in the test bed's folder;
/// the watcher notes what it does in the file of the same name with
/// `.log` (e.g. `pod-logs-member-1.log`, see `TestBed::log_of`).
pub(crate) fn logs_dir(bed_dir: &Path, member: &str) -> PathBuf {
    bed_dir.join(format!("pod-logs-{member}"))
}

/// Make a member's log folder with its empty log, and install kwok's
/// `Logs` CRD on it: both must be there before kwok starts.
pub(crate) async fn prepare(
    client: &Client,
    bin_dir: &Path,
    bed_dir: &Path,
    member: &str,
) -> Result<(), TestBedError> {
    let dir = logs_dir(bed_dir, member);
    let io = |what: String| move |source| TestBedError::Io { what, source };
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let empty = dir.join(EMPTY_LOG);
    std::fs::write(&empty, "").map_err(io(format!("writing {}", empty.display())))?;

    let path = bin_dir.join(LOGS_CRD);
    if !path.exists() {
        return Err(TestBedError::Bins(format!(
            "{} has no {LOGS_CRD}; run hack/k8s-bins.sh",
            bin_dir.display()
        )));
    }
    let crd: CustomResourceDefinition = read_yaml(&path)?;
    let name = crd.name_any();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .map_err(|source| TestBedError::Kube {
        what: format!("installing CRD {name} on {member}"),
        source,
    })?;
    crate::testbed::wait_established(&crds, &name, member).await
}

/// kwok's configuration for a member's logs: the options (indented for
/// `options:`) and the `ClusterLogs` document that gives every container
/// without a `Logs` entry the empty log.
pub(crate) fn kwok_config(bed_dir: &Path, member: &str, port: u16) -> (String, String) {
    let options = format!(
        "\x20 nodeIP: 127.0.0.1\n\
         \x20 nodePort: {port}\n\
         \x20 serverAddress: 127.0.0.1:{port}\n\
         \x20 enableCRDs: [Logs]\n\
         \x20 enableDebuggingHandlers: true\n\
         \x20 enableProfilingHandler: false\n"
    );
    let empty = logs_dir(bed_dir, member).join(EMPTY_LOG);
    // A JSON string is a YAML string, whatever the path holds.
    let empty = Value::from(empty.to_string_lossy().into_owned()).to_string();
    let cluster_logs = format!(
        "apiVersion: kwok.x-k8s.io/v1alpha1\n\
         kind: ClusterLogs\n\
         metadata:\n  name: empty\n\
         spec:\n  logs:\n  - logsFile: {empty}\n"
    );
    (options, cluster_logs)
}

/// Watch `member`'s pods and serve the logs of those that print, on a
/// thread of its own: the test bed outlives the runtime that started it.
pub(crate) fn spawn_watcher(
    config: Config,
    bed_dir: &Path,
    member: &str,
) -> Result<(), TestBedError> {
    let dir = logs_dir(bed_dir, member);
    let name = format!("pod-logs-{member}");
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let journal = Journal(dir.with_extension("log"));
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(watch(config, &dir, &journal)),
                Err(e) => journal.note(&format!("cannot start a runtime: {e}")),
            }
        })
        .map_err(|source| TestBedError::Io {
            what: format!("starting the thread {name}"),
            source,
        })?;
    Ok(())
}

/// Serve each new pod that prints, until the test bed's folder is gone.
/// Each pod is served by a task of its own: one waiting for kwok must not
/// hold up the others.
async fn watch(config: Config, dir: &Path, journal: &Journal) {
    let client = match Client::try_from(config) {
        Ok(client) => client,
        Err(e) => return journal.note(&format!("cannot build a client: {e}")),
    };
    let mut events = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .boxed();
    // By pod uid: served (or nothing to serve), being served, to retry.
    let mut done: HashSet<String> = HashSet::new();
    let mut serving: HashSet<String> = HashSet::new();
    let mut failed: HashMap<String, Pod> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut tick = tokio::time::interval(TICK);
    let dir: Arc<Path> = Arc::from(dir);
    let start = |tasks: &mut JoinSet<_>, pod: Pod| {
        let (client, dir) = (client.clone(), dir.clone());
        tasks.spawn(async move {
            let served = serve(&client, &dir, &pod).await;
            (pod, served)
        });
    };
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => {
                    let uid = pod.uid().unwrap_or_default();
                    if done.contains(&uid) || serving.contains(&uid) {
                        continue;
                    }
                    if printed(&pod).is_empty() || pod.metadata.deletion_timestamp.is_some() {
                        done.insert(uid);
                        continue;
                    }
                    failed.remove(&uid);
                    serving.insert(uid);
                    start(&mut tasks, pod);
                }
                Some(Ok(watcher::Event::Delete(pod))) => {
                    let uid = pod.uid().unwrap_or_default();
                    done.remove(&uid);
                    failed.remove(&uid);
                }
                Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => {}
                Some(Err(e)) => journal.note(&format!("watching pods: {e}")),
                None => return,
            },
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => match joined {
                Ok((pod, result)) => {
                    let uid = pod.uid().unwrap_or_default();
                    serving.remove(&uid);
                    match result {
                        Ok(Some(waited)) => {
                            journal.note(&format!(
                                "serving the logs of pod {} (kwok served them {waited:?} after the Logs object was made)",
                                pod_ref(&pod)
                            ));
                            done.insert(uid);
                        }
                        Ok(None) => {
                            done.insert(uid);
                        }
                        Err(e) => {
                            journal.note(&format!("pod {} (will retry): {e}", pod_ref(&pod)));
                            failed.insert(uid, pod);
                        }
                    }
                }
                Err(e) => journal.note(&format!("a task serving logs failed: {e}")),
            },
            _ = tick.tick() => {
                if !dir.exists() {
                    return;
                }
                for (uid, pod) in std::mem::take(&mut failed) {
                    serving.insert(uid);
                    start(&mut tasks, pod);
                }
            }
        }
    }
}

/// Write the log files of the pod's containers that print, point kwok to
/// them, wait until the member's API server serves them, and mark the pod:
/// how long kwok took to serve them, or `None` if the pod is gone.
async fn serve(client: &Client, dir: &Path, pod: &Pod) -> Result<Option<Duration>, TestBedError> {
    let lines = printed(pod);
    let namespace = pod.namespace().unwrap_or_default();
    let name = pod.name_any();
    let uid = pod.uid().unwrap_or_default();
    // As a kubelet lays them out: a folder per pod, a file per container.
    // `create_dir`, not `create_dir_all`: never recreate a removed test bed.
    let folder = dir.join(format!("{namespace}_{name}_{uid}"));
    match std::fs::create_dir(&folder) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(TestBedError::Io {
                what: format!("creating {}", folder.display()),
                source,
            });
        }
    }
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let mut files = Vec::new();
    for (container, text) in &lines {
        let file = folder.join(format!("{container}.log"));
        std::fs::write(&file, cri_log(text, &now)).map_err(|source| TestBedError::Io {
            what: format!("writing {}", file.display()),
            source,
        })?;
        files.push((container.clone(), file));
    }
    let logs = logs_object(pod, &files, &dir.join(EMPTY_LOG));
    let resource = ApiResource {
        group: "kwok.x-k8s.io".into(),
        version: "v1alpha1".into(),
        api_version: "kwok.x-k8s.io/v1alpha1".into(),
        kind: "Logs".into(),
        plural: "logs".into(),
    };
    Api::<DynamicObject>::namespaced_with(client.clone(), &namespace, &resource)
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&logs),
        )
        .await
        .map_err(|source| TestBedError::Kube {
            what: format!("applying Logs {namespace}/{name}"),
            source,
        })?;

    // kwok learns of the Logs object through a watch of its own (and right
    // after it starts, only once its first list has succeeded): until
    // then it serves the empty log. Wait until a container that prints
    // reads back as written, through the API server as a test reads it.
    let made = Instant::now();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    if let Some((container, text)) = lines.iter().find(|(_, text)| !text.trim().is_empty()) {
        let expected: String = text.lines().map(|l| format!("{l}\n")).collect();
        let params = LogParams {
            container: Some(container.clone()),
            ..Default::default()
        };
        let deadline = Instant::now() + SERVE_TIMEOUT;
        loop {
            let last = match pods.logs(&name, &params).await {
                Ok(log) if log == expected => break,
                Ok(log) => format!("read {log:?}"),
                Err(kube::Error::Api(status)) if status.code == 404 => return Ok(None),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                return Err(TestBedError::Timeout {
                    what: format!(
                        "the log of {container} in pod {namespace}/{name} to be served (last: {last})"
                    ),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
    let waited = made.elapsed();

    let ready = json!({"metadata": {"annotations": {ANNOTATION_LOGS_READY: "ready"}}});
    let params = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    match pods.patch(&name, &params, &Patch::Merge(&ready)).await {
        Ok(_) => Ok(Some(waited)),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        Err(source) => Err(TestBedError::Kube {
            what: format!("annotating pod {namespace}/{name}"),
            source,
        }),
    }
}

/// What each container of the pod prints (its [`TEST_LOG_ENV`]), by
/// container name; containers without the variable are left out.
fn printed(pod: &Pod) -> Vec<(String, String)> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    spec.containers
        .iter()
        .filter_map(|c| {
            let value = c
                .env
                .iter()
                .flatten()
                .find(|e| e.name == TEST_LOG_ENV)?
                .value
                .clone()?;
            Some((c.name.clone(), value))
        })
        .collect()
}

/// `text` as a container runtime logs it (the CRI format kwok reads): one
/// full stdout line per line of `text`, all at `timestamp` (RFC 3339).
fn cri_log(text: &str, timestamp: &str) -> String {
    text.lines()
        .map(|line| format!("{timestamp} stdout F {line}\n"))
        .collect()
}

/// The kwok `Logs` object for a pod: each listed container's file, and the
/// empty log for the pod's other containers.
fn logs_object(pod: &Pod, files: &[(String, PathBuf)], empty: &Path) -> Value {
    let mut logs: Vec<Value> = files
        .iter()
        .map(|(container, file)| {
            json!({"containers": [container], "logsFile": file.to_string_lossy()})
        })
        .collect();
    logs.push(json!({"logsFile": empty.to_string_lossy()}));
    json!({
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Logs",
        "metadata": {
            "name": pod.name_any(),
            "namespace": pod.namespace(),
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "Pod",
                "name": pod.name_any(), "uid": pod.uid(),
            }],
        },
        "spec": {"logs": logs},
    })
}

fn pod_ref(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

/// The watcher's own log, a file beside the processes' logs. Notes are
/// best effort: once the test bed's folder is gone there is nowhere to
/// write them, and the folder must not be made again.
struct Journal(PathBuf);

impl Journal {
    fn note(&self, line: &str) {
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.0)
        {
            let _ = writeln!(file, "{} {line}", k8s_openapi::jiff::Timestamp::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(containers: Value) -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "run-pod", "namespace": "ns", "uid": "u-1"},
            "spec": {"containers": containers},
        }))
        .expect("a valid Pod")
    }

    #[test]
    fn only_containers_with_the_variable_print() {
        let pod = pod(json!([
            {"name": "step-a", "env": [{"name": "OTHER", "value": "x"}, {"name": TEST_LOG_ENV, "value": "one\ntwo"}]},
            {"name": "step-b", "env": [{"name": "OTHER", "value": "x"}]},
            {"name": "step-c"},
            {"name": "step-d", "env": [{"name": TEST_LOG_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]},
        ]));
        assert_eq!(
            printed(&pod),
            vec![("step-a".to_owned(), "one\ntwo".to_owned())]
        );
    }

    #[test]
    fn each_line_is_a_full_stdout_line() {
        let t = "2026-01-02T03:04:05.123456789Z";
        assert_eq!(
            cri_log("line one\n\nline two\n", t),
            format!("{t} stdout F line one\n{t} stdout F \n{t} stdout F line two\n")
        );
        assert_eq!(cri_log("", t), "");
    }

    #[test]
    fn the_logs_object_is_owned_by_its_pod_and_covers_every_container() {
        let pod = pod(json!([{"name": "step-a"}]));
        let object = logs_object(
            &pod,
            &[("step-a".to_owned(), PathBuf::from("/d/a.log"))],
            Path::new("/d/empty.log"),
        );
        assert_eq!(object["metadata"]["name"], "run-pod");
        assert_eq!(object["metadata"]["namespace"], "ns");
        assert_eq!(object["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(
            object["spec"]["logs"],
            json!([
                {"containers": ["step-a"], "logsFile": "/d/a.log"},
                {"logsFile": "/d/empty.log"},
            ])
        );
    }

    #[test]
    fn kwok_is_told_where_to_serve_and_what_an_unlisted_container_prints() {
        let (options, cluster_logs) = kwok_config(Path::new("/bed"), "member-1", 20001);
        assert!(options.contains("serverAddress: 127.0.0.1:20001\n"));
        assert!(options.contains("nodePort: 20001\n"));
        assert!(options.contains("nodeIP: 127.0.0.1\n"));
        assert!(options.contains("enableCRDs: [Logs]\n"));
        let doc: Value = serde_saphyr::from_str(&cluster_logs).expect("valid YAML");
        assert_eq!(
            doc["spec"]["logs"],
            json!([{"logsFile": "/bed/pod-logs-member-1/empty.log"}])
        );
    }
}
