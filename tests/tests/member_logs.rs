//! `kubectl logs` works on a member as on a real cluster: the member's API
//! server proxies `pods/log` to kwok, which serves what each step of a
//! Tekton TaskRun printed (its `TEKFED_TEST_LOG`, see
//! `testbed/src/logs.rs`), and an empty log for a step that printed
//! nothing.

use std::time::Duration;

use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, DynamicObject, LogParams, PostParams};
use serde_json::{Value, json};
use tekfed_runtime::connect::tekton_resource;
use tekfed_testbed::logs::TEST_LOG_ENV;
use tekfed_testbed::{TestBed, eventually};

const MEMBER: &str = "member-1";
const WAIT: Duration = Duration::from_secs(120);

async fn create(api: &Api<DynamicObject>, object: Value) {
    let object: DynamicObject = serde_json::from_value(object).expect("a valid object");
    api.create(&PostParams::default(), &object)
        .await
        .expect("creating on the member");
}

#[tokio::test]
async fn a_step_s_log_is_what_it_printed() {
    let bed = TestBed::start(1).await.unwrap();
    let client = bed.client(MEMBER).await.unwrap();
    let ns = bed.namespace("logs", &[MEMBER]).await.unwrap();
    // Tekton reads the namespace's `default` ServiceAccount for every run.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    eventually("the default ServiceAccount", WAIT, || {
        let accounts = accounts.clone();
        async move { accounts.get_opt("default").await.ok().flatten() }
    })
    .await;

    let step = |name: &str, printed: Option<&str>| {
        let mut step = json!({"name": name, "image": "busybox", "script": "echo"});
        if let Some(printed) = printed {
            step["env"] = json!([{"name": TEST_LOG_ENV, "value": printed}]);
        }
        step
    };
    let tasks = Api::namespaced_with(client.clone(), &ns, &tekton_resource("Task"));
    create(
        &tasks,
        json!({
            "apiVersion": "tekton.dev/v1", "kind": "Task",
            "metadata": {"name": "talk", "namespace": ns},
            "spec": {"steps": [
                step("greet", Some("line one\nline two")),
                step("part", Some("goodbye\n\nsee you\n")),
                step("quiet", None),
            ]},
        }),
    )
    .await;
    let runs = Api::namespaced_with(client.clone(), &ns, &tekton_resource("TaskRun"));
    create(
        &runs,
        json!({
            "apiVersion": "tekton.dev/v1", "kind": "TaskRun",
            "metadata": {"name": "talk-run", "namespace": ns},
            "spec": {"taskRef": {"name": "talk"}},
        }),
    )
    .await;
    let pod_name = eventually("the TaskRun to succeed", WAIT, || {
        let runs = runs.clone();
        async move {
            let status = runs.get("talk-run").await.ok()?.data["status"].clone();
            let succeeded = status["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Succeeded" && c["status"] == "True");
            succeeded.then(|| status["podName"].as_str().map(str::to_owned))?
        }
    })
    .await;

    // Through the member API server's `pods/log`, as any client reads it.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let assert_log = |container: &str, tail_lines: Option<i64>, expected: &str| {
        let params = LogParams {
            container: Some(container.to_owned()),
            tail_lines,
            ..Default::default()
        };
        let (pods, pod_name, bed) = (pods.clone(), pod_name.clone(), &bed);
        let (container, expected) = (container.to_owned(), expected.to_owned());
        async move {
            let log = pods
                .logs(&pod_name, &params)
                .await
                .unwrap_or_else(|e| panic!("the log of {container}: {e}"));
            assert!(
                log == expected,
                "the log of {container} (tailLines {tail_lines:?}) is {log:?}, not {expected:?}\n\
                 --- the test bed's log watcher ---\n{}\n--- kwok ---\n{}",
                bed.log_of(&format!("pod-logs-{MEMBER}")),
                bed.log_of(&format!("kwok-{MEMBER}")),
            );
        }
    };
    assert_log("step-greet", None, "line one\nline two\n").await;
    assert_log("step-part", None, "goodbye\n\nsee you\n").await;
    // A step that prints nothing.
    assert_log("step-quiet", None, "").await;
    assert_log("step-greet", Some(1), "line two\n").await;

    // A follow stream gives the lines too; it does not end when the step
    // has (kwok keeps it open), so the test drops it once they are in.
    let params = LogParams {
        container: Some("step-greet".into()),
        follow: true,
        ..Default::default()
    };
    let stream = pods.log_stream(&pod_name, &params).await.unwrap();
    let first_two: Vec<String> = tokio::time::timeout(WAIT, stream.lines().take(2).try_collect())
        .await
        .expect("two lines from the follow stream")
        .unwrap();
    assert_eq!(first_two, ["line one", "line two"]);

    // And `kubectl logs`, with the test bed's kubeconfig.
    let output = std::process::Command::new(bed.bin_dir().join("kubectl"))
        .arg(format!("--kubeconfig={}", bed.kubeconfig().display()))
        .args(["--context", MEMBER, "--namespace", &ns])
        .args(["logs", &pod_name, "--container", "step-part"])
        .output()
        .expect("running kubectl");
    assert!(
        output.status.success(),
        "kubectl logs failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "goodbye\n\nsee you\n"
    );
}
