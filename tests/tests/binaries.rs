//! The real Tekton API on a member, and tekfed's binaries starting against
//! real API servers: they connect, and refuse with a clear message when a
//! cluster lacks the CRDs they need.

use std::process::{Command, Stdio};
use std::time::Duration;

use kube::api::{Api, DynamicObject, PostParams};
use serde_json::json;
use tekfed_runtime::connect::tekton_resource;
use tekfed_testbed::{HUB, binary, eventually, shared};

/// Whether every field of `sent` is in `read` with the same value (what
/// Tekton's defaulting webhook adds is allowed; nothing sent may change).
fn keeps(read: &serde_json::Value, sent: &serde_json::Value) -> bool {
    match (read, sent) {
        (serde_json::Value::Object(r), serde_json::Value::Object(s)) => s
            .iter()
            .all(|(k, v)| r.get(k).is_some_and(|rv| keeps(rv, v))),
        (serde_json::Value::Array(r), serde_json::Value::Array(s)) => {
            r.len() == s.len() && r.iter().zip(s).all(|(a, b)| keeps(a, b))
        }
        _ => read == sent,
    }
}

#[tokio::test]
async fn tekton_v1_objects_round_trip_on_a_member() {
    let bed = shared();
    let member = &bed.members()[0];
    let client = bed.client(member).await.unwrap();
    let ns = bed.namespace("tekton", &[member]).await.unwrap();
    let objects = [
        (
            "Task",
            "hello",
            json!({"steps": [{"name": "echo", "image": "ubuntu", "command": ["echo"], "args": ["hello world"]}]}),
        ),
        (
            "TaskRun",
            "hello-run",
            json!({"taskRef": {"name": "hello"}, "status": "TaskRunCancelled"}),
        ),
        (
            "Pipeline",
            "build-and-deploy",
            json!({"tasks": [
                {"name": "build", "taskRef": {"name": "hello"}},
                {"name": "test", "taskRef": {"name": "hello"}, "runAfter": ["build"]},
                {"name": "deploy", "taskRef": {"name": "hello"}, "runAfter": ["test"]},
            ]}),
        ),
        (
            "PipelineRun",
            "build-and-deploy-1",
            json!({"pipelineRef": {"name": "build-and-deploy"}, "status": "PipelineRunPending"}),
        ),
    ];
    for (kind, name, spec) in objects {
        let resource = tekton_resource(kind);
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &resource);
        let mut object = DynamicObject::new(name, &resource);
        object.data = json!({"spec": spec});
        api.create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("creating {kind}/{name}: {e}"));
        let read = api.get(name).await.unwrap();
        assert_eq!(read.types.as_ref().unwrap().api_version, "tekton.dev/v1");
        assert_eq!(read.types.as_ref().unwrap().kind, kind);
        assert!(
            keeps(&read.data["spec"], &spec),
            "{kind}/{name} came back changed: sent {spec}, read {}",
            read.data["spec"]
        );
        if kind.ends_with("Run") {
            // Defaulted at admission by Tekton's webhook, as on a real cluster.
            assert!(
                !read.data["spec"]["timeout"].is_null() || !read.data["spec"]["timeouts"].is_null(),
                "{kind}/{name} was not defaulted: {}",
                read.data["spec"]
            );
        }
    }
}

#[test]
fn every_binary_teaches_with_help() {
    for name in ["tekfed-hub", "tekfed-agent", "kubectl-tekfed"] {
        let output = Command::new(binary(name)).arg("--help").output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{name} --help failed");
        assert!(text.contains("Usage:"), "{name} --help:\n{text}");
    }
    for name in ["tekfed-hub", "tekfed-agent"] {
        let text = String::from_utf8_lossy(
            &Command::new(binary(name))
                .arg("--help")
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned();
        assert!(
            text.contains("--kubeconfig") && text.contains("--context"),
            "{name} --help:\n{text}"
        );
        assert!(
            text.contains("Example"),
            "{name} --help has no example:\n{text}"
        );
    }
}

#[test]
fn the_hub_refuses_a_cluster_without_tekfed_api() {
    let bed = shared();
    let output = Command::new(binary("tekfed-hub"))
        .arg("--kubeconfig")
        .arg(bed.kubeconfig())
        .args(["--context", "member-1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "the hub started on a cluster without its CRDs"
    );
    assert!(stderr.contains("memberclusters.tekfed.io"), "{stderr}");
    assert!(
        stderr.contains("kubectl apply --server-side -f api/manifests/"),
        "{stderr}"
    );
}

#[test]
fn the_agent_refuses_a_member_without_tekton() {
    let bed = shared();
    let output = Command::new(binary("tekfed-agent"))
        .args(["--cluster-name", "member-1", "--kubeconfig"])
        .arg(bed.kubeconfig())
        .args(["--context", HUB, "--hub-kubeconfig"])
        .arg(bed.kubeconfig())
        .args(["--hub-context", HUB])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("taskruns.tekton.dev"), "{stderr}");
    assert!(stderr.contains("Install Tekton Pipelines"), "{stderr}");
}

#[test]
fn a_missing_context_is_named() {
    let bed = shared();
    let output = Command::new(binary("tekfed-hub"))
        .arg("--kubeconfig")
        .arg(bed.kubeconfig())
        .args(["--context", "no-such-cluster"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("no-such-cluster"), "{stderr}");
}

/// Start a binary, wait until its log says `ready`, and stop it.
async fn starts_and_says(mut command: Command, ready: &str) {
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = command
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let path = log.path().to_owned();
    let seen = eventually(
        "the binary to report it is connected",
        Duration::from_secs(60),
        || {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let exited = child.try_wait().unwrap();
            async move {
                match exited {
                    Some(status) => Some(Err(format!("exited {status}: {text}"))),
                    None if text.contains(ready) => Some(Ok(())),
                    None => None,
                }
            }
        },
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    seen.unwrap();
}

#[tokio::test]
async fn the_hub_and_agent_start_against_real_clusters() {
    let bed = shared();
    let mut hub = Command::new(binary("tekfed-hub"));
    hub.arg("--kubeconfig")
        .arg(bed.kubeconfig())
        .args(["--context", HUB]);
    starts_and_says(hub, "tekfed CRDs are installed").await;

    let mut agent = Command::new(binary("tekfed-agent"));
    agent
        .args(["--cluster-name", "member-1", "--kubeconfig"])
        .arg(bed.kubeconfig())
        .args(["--context", "member-1", "--hub-kubeconfig"])
        .arg(bed.kubeconfig())
        .args(["--hub-context", HUB]);
    starts_and_says(agent, "connected to member and hub").await;
}

#[test]
fn kubectl_tekfed_prints_installable_crds() {
    let bed = shared();
    let crds = Command::new(binary("kubectl-tekfed"))
        .arg("crds")
        .output()
        .unwrap();
    assert!(crds.status.success());
    let mut apply = Command::new(bed.bin_dir().join("kubectl"))
        .arg("--kubeconfig")
        .arg(bed.kubeconfig())
        .args([
            "--context",
            HUB,
            "apply",
            "--server-side",
            "--force-conflicts",
            "--dry-run=server",
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    apply.stdin.take().unwrap().write_all(&crds.stdout).unwrap();
    let out = apply.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for crd in [
        "memberclusters",
        "federatedtasks",
        "federatedpipelines",
        "federatedtaskruns",
        "federatedpipelineruns",
    ] {
        assert!(stdout.contains(&format!("{crd}.tekfed.io")), "{stdout}");
    }
    assert!(stdout.contains("tekfed-run-frozen"), "{stdout}");
}
