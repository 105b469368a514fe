//! Run logs from the hub (`kubectl tekfed logs`, the aggregated API
//! `logs.tekfed.io` the hub serves): a member joined with `kubectl tekfed
//! join`, the real hub behind the hub API server's aggregator, real Tekton
//! and pods whose step logs kwok serves (`tekfed_testbed::logs`). The user
//! has only hub credentials; the hub's RBAC decides who reads what.

use std::io::BufRead;
use std::time::{Duration, Instant};

use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use tekfed_api::tekton::is_final;
use tekfed_api::{FederatedPipelineRun, FederatedTaskRun, RunPhase};
use tekfed_testbed::access;
use tekfed_testbed::federation::wait_condition;
use tekfed_testbed::logs::TEST_LOG_ENV;
use tekfed_testbed::{HUB, HUB_API_SERVER_NAME, TestBed, binary, eventually, kubectl_tekfed};

const MEMBER: &str = "member-1";
const WAIT: Duration = Duration::from_secs(180);

fn tekfed(bed: &TestBed, args: &[&str]) -> (bool, String) {
    let kubeconfig = bed.kubeconfig().to_string_lossy();
    let mut all = args.to_vec();
    all.extend(["--kubeconfig", &kubeconfig, "--context", HUB]);
    kubectl_tekfed(&all)
}

/// A CA and a serving certificate it signed for the name the aggregator
/// verifies: `(ca pem, cert pem, key pem)`.
fn serving_certificate() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "tekfed-logs-ca");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec![HUB_API_SERVER_NAME.to_owned()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Join the member with `kubectl tekfed join`, run its agent with the
/// identity join made, and the hub serving logs behind the aggregator.
async fn federation_serving_logs(bed: &TestBed) {
    let (ok, out) = tekfed(
        bed,
        &[
            "join",
            MEMBER,
            "--cluster-context",
            MEMBER,
            "--hub-context",
            HUB,
        ],
    );
    assert!(ok, "join: {out}");
    assert!(
        out.contains("ClusterRole tekfed-logs") && out.contains("tekfed-member-member-1-logs"),
        "join creates the log reader: {out}"
    );
    bed.start_joined_agent(MEMBER).await.unwrap();

    let (ca, cert, key) = serving_certificate();
    let (cert_path, key_path) = (bed.dir().join("logs.crt"), bed.dir().join("logs.key"));
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    bed.start_hub(
        "tekfed-hub",
        &[
            "--logs-addr",
            &addr,
            "--logs-cert",
            &cert_path.to_string_lossy(),
            "--logs-key",
            &key_path.to_string_lossy(),
        ],
    )
    .unwrap();
    bed.register_hub_api(
        tekfed_api::logs::GROUP,
        tekfed_api::logs::VERSION,
        port,
        &ca,
    )
    .await
    .unwrap();
    wait_condition(bed, &[MEMBER.to_owned()], "Ready", WAIT)
        .await
        .unwrap();
    let hub = bed.client(HUB).await.unwrap();
    let api_services: Api<
        k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService,
    > = Api::all(hub);
    eventually("the log APIService to be Available", WAIT, || {
        let api_services = api_services.clone();
        async move {
            let s = api_services.get(tekfed_api::logs::API_SERVICE).await.ok()?;
            s.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Available" && c.status == "True")
                .then_some(())
        }
    })
    .await;
}

fn step(name: &str, printed: &str) -> Value {
    json!({"name": name, "image": "busybox", "script": "echo",
           "env": [{"name": TEST_LOG_ENV, "value": printed}]})
}

/// A three-task pipeline, one task after the other, two steps each; each
/// step prints two lines naming itself.
fn three_task_run(ns: &str, name: &str) -> FederatedPipelineRun {
    let task = |task: &str, after: Option<&str>| {
        let mut t = json!({"name": task, "taskSpec": {"stepTemplate": {"securityContext": tekfed_api::guard::restricted_security_context()}, "steps": [
            step("first", &format!("{task} first 1\n{task} first 2")),
            step("second", &format!("{task} second 1\n{task} second 2")),
        ]}});
        if let Some(after) = after {
            t["runAfter"] = json!([after]);
        }
        t
    };
    serde_json::from_value(json!({
        "apiVersion": "tekfed.io/v1alpha1", "kind": "FederatedPipelineRun",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "template": {
                "metadata": {"annotations": {"tekfed.io/test-duration": "4s"}},
                "spec": {"pipelineSpec": {"tasks": [
                    task("build", None), task("test", Some("build")), task("deploy", Some("test")),
                ]}},
            },
            "placement": {"clusters": [{"name": MEMBER}]},
        },
    }))
    .unwrap()
}

/// What `logs` prints for the three-task run, in order.
fn expected(tasks: &[&str]) -> Vec<String> {
    let mut lines = Vec::new();
    for task in tasks {
        for step in ["first", "second"] {
            for i in [1, 2] {
                lines.push(format!("[{task} : {step}] {task} {step} {i}"));
            }
        }
    }
    lines
}

/// A client of the hub as `user` (impersonated by the bed's admin).
async fn as_user(bed: &TestBed, user: &str) -> Client {
    let mut config = bed.config(HUB).await.unwrap();
    config.auth_info.impersonate = Some(user.to_owned());
    config.auth_info.impersonate_groups = Some(vec!["system:authenticated".to_owned()]);
    Client::try_from(config).unwrap()
}

/// `(HTTP status, body)` of a GET on the hub.
async fn get(client: &Client, path: &str) -> (u16, String) {
    let request = http::Request::get(path).body(Vec::new()).unwrap();
    match client.request_text(request).await {
        Ok(text) => (200, text),
        Err(kube::Error::Api(status)) => (status.code, status.message),
        Err(e) => panic!("GET {path}: {e}"),
    }
}

#[tokio::test]
async fn logs_of_a_federated_run_are_read_from_the_hub_with_hub_rbac() {
    let bed = TestBed::start(1).await.unwrap();
    federation_serving_logs(&bed).await;
    let hub = bed.client(HUB).await.unwrap();
    let ns = bed.namespace("logs", &[HUB]).await.unwrap();

    // `logs -f` started as soon as the run is created (still Queued): it
    // waits, prints each step's lines in order while the run goes on,
    // and exits once it is over.
    let runs: Api<FederatedPipelineRun> = Api::namespaced(hub.clone(), &ns);
    runs.create(&PostParams::default(), &three_task_run(&ns, "build-1"))
        .await
        .unwrap();
    let kubeconfig = bed.kubeconfig().to_string_lossy().into_owned();
    let mut child = std::process::Command::new(binary("kubectl-tekfed"))
        .args([
            "logs",
            "-f",
            "fpr/build-1",
            "-n",
            &ns,
            "--kubeconfig",
            &kubeconfig,
            "--context",
            HUB,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let began = Instant::now();
    let mut printed = Vec::new();
    let mut phase_at_first_line = None;
    loop {
        let line = match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(_) => {
                let _ = child.kill();
                let mut stderr = String::new();
                let _ =
                    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr);
                let hub_log = bed.log_of("tekfed-hub");
                let tail: Vec<&str> = hub_log.lines().rev().take(60).collect();
                panic!(
                    "logs -f went silent after {printed:?}\nstderr: {stderr}\nhub log (last lines first):\n{}",
                    tail.join("\n")
                );
            }
        };
        if phase_at_first_line.is_none() {
            let run = runs.get("build-1").await.unwrap();
            phase_at_first_line = Some(run.status.and_then(|s| s.phase));
        }
        printed.push(line);
    }
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "logs -f: {stderr}");
    assert_eq!(printed, expected(&["build", "test", "deploy"]), "{stderr}");
    let first = phase_at_first_line.flatten();
    assert!(
        first.is_some_and(|p| !is_final(p)),
        "the first lines came while the run was going on (it was {first:?})"
    );
    // It exited because the run finished.
    let run = runs.get("build-1").await.unwrap();
    assert_eq!(run.status.and_then(|s| s.phase), Some(RunPhase::Succeeded));
    eprintln!("logs -f took {:?}", began.elapsed());

    // Filters, without -f, after the run.
    let (ok, out) = tekfed(&bed, &["logs", "fpr/build-1", "-n", &ns, "--task", "test"]);
    assert!(ok, "{out}");
    assert_eq!(out.lines().collect::<Vec<_>>(), expected(&["test"]));
    let (ok, out) = tekfed(
        &bed,
        &[
            "logs", "build-1", "-n", &ns, "--task", "deploy", "--step", "second",
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "[deploy : second] deploy second 1",
            "[deploy : second] deploy second 2"
        ]
    );

    // describe: where and why, the member run, each TaskRun's steps, Events.
    let (ok, out) = tekfed(&bed, &["describe", "fpr/build-1", "-n", &ns]);
    assert!(ok, "{out}");
    for wanted in [
        "Kind:       FederatedPipelineRun",
        "Phase:      Succeeded",
        "Cluster:    member-1",
        "scheduled to member-1 as the least loaded; candidates: member-1 (",
        "Member run on member-1:",
        "Task runs on member-1:",
        "Scheduled",
    ] {
        assert!(out.contains(wanted), "{wanted:?} not in:\n{out}");
    }
    for task in ["build", "test", "deploy"] {
        let header = out
            .lines()
            .position(|l| l.starts_with(&format!("  {task} (build-1-{task}, pod ")))
            .unwrap_or_else(|| panic!("no TaskRun {task} in:\n{out}"));
        let steps: Vec<&str> = out.lines().skip(header + 1).take(2).collect();
        for (line, step) in steps.iter().zip(["first", "second"]) {
            assert!(
                line.trim_start().starts_with(step)
                    && line.contains("Terminated")
                    && line.contains("(exit 0)"),
                "{task}/{step}: {line}\n{out}"
            );
        }
    }

    // A TaskRun: lines prefixed with the step, as `tkn taskrun logs` does.
    let task_runs: Api<FederatedTaskRun> = Api::namespaced(hub.clone(), &ns);
    let tr: FederatedTaskRun = serde_json::from_value(json!({
        "apiVersion": "tekfed.io/v1alpha1", "kind": "FederatedTaskRun",
        "metadata": {"name": "smoke", "namespace": ns},
        "spec": {"template": {"spec": {"taskSpec": {"stepTemplate": {"securityContext": tekfed_api::guard::restricted_security_context()}, "steps": [step("check", "ok")]}}},
                 "placement": {"clusters": [{"name": MEMBER}]}},
    }))
    .unwrap();
    task_runs.create(&PostParams::default(), &tr).await.unwrap();
    let (ok, out) = tekfed(&bed, &["logs", "-f", "ftr/smoke", "-n", &ns]);
    assert!(ok, "{out}");
    assert_eq!(out.trim_end(), "[check] ok");

    // Who may read: the hub's RBAC. `reader` may get the run and its log;
    // `log-only` may get logs but not the run; `nobody` neither.
    let roles: Api<ClusterRole> = Api::all(hub.clone());
    let role = |name: &str, rules: Value| -> ClusterRole {
        serde_json::from_value(
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                                      "metadata": {"name": name}, "rules": rules}),
        )
        .unwrap()
    };
    let logs_rule = json!({"apiGroups": ["logs.tekfed.io"], "resources": ["federatedpipelineruns/log"], "verbs": ["get"]});
    let runs_rule = json!({"apiGroups": ["tekfed.io"], "resources": ["federatedpipelineruns"], "verbs": ["get"]});
    roles
        .create(
            &PostParams::default(),
            &role("test-run-reader", json!([logs_rule, runs_rule])),
        )
        .await
        .unwrap();
    roles
        .create(
            &PostParams::default(),
            &role("test-log-only", json!([logs_rule])),
        )
        .await
        .unwrap();
    let bindings: Api<RoleBinding> = Api::namespaced(hub.clone(), &ns);
    for (user, role) in [("reader", "test-run-reader"), ("log-only", "test-log-only")] {
        let binding: RoleBinding = serde_json::from_value(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": user, "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        }))
        .unwrap();
        bindings
            .create(&PostParams::default(), &binding)
            .await
            .unwrap();
    }
    let path = tekfed_api::logs::path(
        tekfed_api::RunKind::PipelineRun,
        &ns,
        "build-1",
        &tekfed_api::logs::LogOptions {
            task: Some("build".into()),
            ..Default::default()
        },
    );
    let reader = as_user(&bed, "reader").await;
    let (code, body) = eventually("RBAC to let reader read the log", WAIT, || {
        let (reader, path) = (reader.clone(), path.clone());
        async move { Some(get(&reader, &path).await).filter(|(code, _)| *code == 200) }
    })
    .await;
    assert_eq!((code, body.lines().count()), (200, 4), "{body}");
    let (code, message) = get(&as_user(&bed, "log-only").await, &path).await;
    assert_eq!(code, 403, "{message}");
    assert!(
        message.contains("cannot get federatedpipelineruns") && message.contains("log-only"),
        "{message}"
    );
    assert!(
        !message.contains("build first"),
        "no log line in a refusal: {message}"
    );
    let (code, message) = get(&as_user(&bed, "nobody").await, &path).await;
    assert_eq!(code, 403, "the hub API server refuses first: {message}");

    // The member identity the hub reads logs with reads pods and their
    // logs, and no Secrets.
    let member = bed.client(MEMBER).await.unwrap();
    let logs_sa = "system:serviceaccount:tekfed-system:tekfed-logs";
    let can = |verb: &str, resource: &str, sub: Option<&str>| {
        let resource = sub.map_or(resource.to_owned(), |sub| format!("{resource}/{sub}"));
        let attributes = access::in_namespace(access::attributes(verb, "", &resource), &ns);
        let member = member.clone();
        async move { access::may(&member, logs_sa, attributes).await }
    };
    assert!(can("get", "pods", Some("log")).await);
    assert!(can("list", "pods", None).await);
    for (verb, resource) in [
        ("get", "secrets"),
        ("list", "secrets"),
        ("get", "configmaps"),
        ("create", "pods"),
    ] {
        assert!(
            !can(verb, resource, None).await,
            "tekfed-logs may {verb} {resource}"
        );
    }
    assert!(
        !can("create", "pods", Some("exec")).await,
        "tekfed-logs may exec"
    );
}
