//! The Helm charts in `charts/`, with the real `helm` (built by
//! `hack/helm-bin.sh`, passed in `TEKFED_HELM` by `make test`): they lint
//! clean, render what users rely on, refuse an agent without a cluster
//! name, and install on real API servers. No kubelet runs there, so the
//! test runs the pods' part itself: `tekfed-hub` and `tekfed-agent` with the
//! arguments of the installed Deployments, as the charts' ServiceAccounts
//! (tokens from the API servers), until a run placed through the hub
//! succeeds on the member, and no request of theirs was refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ObjectMeta, PostParams};
use kube::{Client, Resource};
use serde_json::{Value, json};
use tekfed_api::{FederatedPipelineRun, FederatedTask, MemberCluster, RunPhase};
use tekfed_runtime::connect::tekton_resource;
use tekfed_testbed::federation::wait_condition;
use tekfed_testbed::{HUB, TestBed, binary, eventually};

const HUB_CHART: &str = "tekfed-hub";
const AGENT_CHART: &str = "tekfed-member-agent";
const MEMBER: &str = "member-1";
const WAIT: Duration = Duration::from_secs(180);

/// The `helm` binary `make test` built and named in `TEKFED_HELM`.
fn helm_path() -> PathBuf {
    let Some(path) = std::env::var_os("TEKFED_HELM") else {
        panic!(
            "TEKFED_HELM is not set. Run the tests with `make test`, which builds helm \
             (hack/helm-bin.sh) and sets it, or set it yourself: \
             TEKFED_HELM=\"$(bash hack/helm-bin.sh | tail -n1)/helm\""
        );
    };
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "TEKFED_HELM={} is not a file; run `make test` (hack/helm-bin.sh builds it)",
        path.display()
    );
    path
}

/// `helm` with config, cache and data of its own: the user's repositories
/// and plugins never take part.
struct Helm {
    bin: PathBuf,
    home: tempfile::TempDir,
}

impl Helm {
    fn new() -> Self {
        Self {
            bin: helm_path(),
            home: tempfile::tempdir().expect("a temporary folder for helm"),
        }
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new(&self.bin);
        command.args(args);
        for (var, dir) in [
            ("HELM_CACHE_HOME", "cache"),
            ("HELM_CONFIG_HOME", "config"),
            ("HELM_DATA_HOME", "data"),
        ] {
            command.env(var, self.home.path().join(dir));
        }
        command.env_remove("KUBECONFIG");
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("running helm {args:?}: {e}"))
    }

    /// Run helm and require success: its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "helm {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `helm template` of a chart: every rendered object.
    fn render(&self, chart_name: &str, args: &[&str]) -> Vec<Value> {
        let chart = chart(chart_name);
        let mut all = vec!["template", chart_name, chart.to_str().unwrap()];
        all.extend_from_slice(args);
        let text = self.ok(&all);
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("helm template {chart_name} is not YAML: {e}\n{text}"));
        docs.into_iter().filter(|d| !d.is_null()).collect()
    }

    /// `helm install` (or uninstall, …) against a test bed cluster.
    async fn on_cluster(&self, bed: &TestBed, context: &str, args: &[&str]) -> String {
        let kubeconfig = bed.kubeconfig().to_str().unwrap().to_owned();
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend(["--kubeconfig".into(), kubeconfig]);
        all.extend(["--kube-context".into(), context.into()]);
        let mut command = tokio::process::Command::from(self.command(&[]));
        command.args(&all);
        let out = command.output().await.expect("running helm");
        assert!(
            out.status.success(),
            "helm {all:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn chart(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts")
        .join(name)
}

fn objects<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = objects(docs, kind);
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    found[0]
}

/// The one object of `kind` named `name`.
fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = objects(docs, kind)
        .into_iter()
        .filter(|d| d["metadata"]["name"] == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {kind} {name}, found {}",
        found.len()
    );
    found[0]
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// The RBAC rules granting `verb` on `resource` in `group`.
fn grants(rules: &Value, group: &str, resource: &str, verb: &str) -> bool {
    rules.as_array().into_iter().flatten().any(|rule| {
        strings(&rule["apiGroups"]).contains(&group)
            && strings(&rule["resources"]).contains(&resource)
            && strings(&rule["verbs"]).contains(&verb)
    })
}

/// Leader election needs exactly this on Leases: create (which RBAC cannot
/// limit by name), then get and update of the one Lease.
fn assert_lease_rules(rules: &Value, lease: &str) {
    let lease_rules: Vec<&Value> = rules
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| strings(&r["resources"]).contains(&"leases"))
        .collect();
    assert_eq!(
        lease_rules,
        [
            &json!({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]}),
            &json!({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [lease], "verbs": ["get", "update"]}),
        ],
        "Lease rules"
    );
}

/// No wildcard anywhere, nothing that grants more RBAC; Secrets only read
/// (the hub's, to carry a run's Secrets where their namespace consents).
fn assert_least_privilege(role: &Value) {
    let name = &role["metadata"]["name"];
    for rule in role["rules"].as_array().expect("a role has rules") {
        for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
            assert!(
                !strings(&rule[field]).contains(&"*"),
                "ClusterRole {name} grants {field} '*': {rule}"
            );
        }
        if strings(&rule["resources"]).contains(&"secrets") {
            assert_eq!(
                strings(&rule["verbs"]),
                ["get", "list", "watch"],
                "ClusterRole {name} writes Secrets cluster-wide: {rule}"
            );
        }
        for verb in ["escalate", "bind", "impersonate"] {
            assert!(
                !strings(&rule["verbs"]).contains(&verb),
                "ClusterRole {name} grants {verb}: {rule}"
            );
        }
    }
}

#[test]
fn both_charts_lint_clean() {
    let helm = Helm::new();
    for (name, args) in [
        (HUB_CHART, vec![]),
        (AGENT_CHART, vec!["--set", "clusterName=member-1"]),
    ] {
        let dir = chart(name);
        let mut all = vec!["lint", "--strict", dir.to_str().unwrap()];
        all.extend(args);
        let out = helm.ok(&all);
        assert!(
            out.contains("1 chart(s) linted, 0 chart(s) failed"),
            "helm lint {name}: {out}"
        );
    }
}

#[test]
fn the_hub_chart_renders_what_users_rely_on() {
    let helm = Helm::new();
    // Leader election is on by default.
    let docs = helm.render(HUB_CHART, &["--namespace", "tekfed-system"]);

    let deployment = one(&docs, "Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        strings(&container["command"]),
        ["/usr/local/bin/tekfed-hub"]
    );
    let args = strings(&container["args"]);
    for wanted in [
        "--namespace=tekfed-system",
        "--metrics-addr=0.0.0.0:9090",
        "--leader-elect",
        "--leader-elect-namespace=tekfed-system",
        "--leader-elect-lease-name=tekfed-hub",
        "--leader-elect-lease-duration=15",
    ] {
        assert!(args.contains(&wanted), "hub args {args:?} lack {wanted}");
    }
    assert_eq!(
        container["env"][0],
        json!({"name": "RUST_LOG", "value": "info"})
    );
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_eq!(
        deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
        true
    );
    let sa = one(&docs, "ServiceAccount");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        sa["metadata"]["name"]
    );
    assert_eq!(
        deployment["metadata"]["labels"]["app.kubernetes.io/name"],
        "tekfed-hub"
    );

    let service = named(&docs, "Service", "tekfed-hub-metrics");
    assert_eq!(
        service["spec"]["ports"][0],
        json!({"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"})
    );
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );

    // Run logs: the hub serves logs.tekfed.io behind a Service and an
    // APIService whose caBundle verifies the serving certificate the hub
    // mounts; it may delegate authentication and authorization.
    for wanted in [
        "--logs-addr=0.0.0.0:8443",
        "--logs-cert=/etc/tekfed/logs-tls/tls.crt",
        "--logs-key=/etc/tekfed/logs-tls/tls.key",
    ] {
        assert!(args.contains(&wanted), "hub args {args:?} lack {wanted}");
    }
    let logs_service = named(&docs, "Service", "tekfed-hub-logs");
    assert_eq!(
        logs_service["spec"]["ports"][0],
        json!({"name": "logs", "port": 443, "targetPort": "logs", "protocol": "TCP"})
    );
    let api_service = named(&docs, "APIService", tekfed_api::logs::API_SERVICE);
    assert_eq!(
        api_service["spec"]["service"],
        json!({"namespace": "tekfed-system", "name": "tekfed-hub-logs", "port": 443})
    );
    assert!(api_service["spec"]["insecureSkipTLSVerify"].is_null());
    let tls = named(&docs, "Secret", "tekfed-hub-logs-tls");
    assert_eq!(api_service["spec"]["caBundle"], tls["data"]["ca.crt"]);
    assert_eq!(
        deployment["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"],
        "tekfed-hub-logs-tls"
    );
    let delegator = named(&docs, "ClusterRoleBinding", "tekfed-hub-auth-delegator");
    assert_eq!(delegator["roleRef"]["name"], "system:auth-delegator");
    let reader = named(&docs, "RoleBinding", "tekfed-hub-auth-reader");
    assert_eq!(reader["metadata"]["namespace"], "kube-system");
    assert_eq!(
        reader["roleRef"]["name"],
        "extension-apiserver-authentication-reader"
    );
    let logs_role = named(&docs, "ClusterRole", "tekfed-hub-logs-reader");
    assert_eq!(
        logs_role["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"],
        "true"
    );
    assert!(grants(
        &logs_role["rules"],
        "logs.tekfed.io",
        "federatedpipelineruns/log",
        "get"
    ));
    let no_logs = helm.render(HUB_CHART, &["--set", "logs.enabled=false"]);
    assert!(objects(&no_logs, "APIService").is_empty());
    let no_logs_args =
        strings(&one(&no_logs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"])
            .join(" ");
    assert!(!no_logs_args.contains("--logs-"), "{no_logs_args}");

    let cluster_role = named(&docs, "ClusterRole", "tekfed-hub");
    assert_least_privilege(cluster_role);
    let rules = &cluster_role["rules"];
    assert!(grants(rules, "tekfed.io", "memberclusters/status", "patch"));
    assert!(grants(rules, "tekfed.io", "runassignments", "create"));
    assert!(grants(rules, "", "namespaces", "create"));
    // Deleting a member's hub namespace with its MemberCluster needs
    // delete on every namespace; the chart's policy confines it to the
    // hub's own ServiceAccount deleting tekfed's cluster namespaces.
    assert!(grants(rules, "", "namespaces", "delete"));
    let confined = named(&docs, "ValidatingAdmissionPolicy", "tekfed-hub-namespaces");
    assert_eq!(
        confined["spec"]["matchConstraints"]["resourceRules"][0]["operations"],
        serde_json::json!(["DELETE"])
    );
    let who = confined["spec"]["matchConditions"][0]["expression"]
        .as_str()
        .unwrap_or_default();
    assert!(
        who.contains("system:serviceaccount:tekfed-system:tekfed-hub"),
        "{who}"
    );
    let rule = confined["spec"]["validations"][0]["expression"]
        .as_str()
        .unwrap_or_default();
    assert!(
        rule.contains("startsWith('tekfed-cluster-')") && rule.contains("'tekfed'"),
        "{rule}"
    );
    let binding = named(
        &docs,
        "ValidatingAdmissionPolicyBinding",
        "tekfed-hub-namespaces",
    );
    assert_eq!(
        binding["spec"]["validationActions"],
        serde_json::json!(["Deny"])
    );
    let role = one(&docs, "Role");
    assert_eq!(role["metadata"]["namespace"], "tekfed-system");
    assert!(grants(&role["rules"], "", "secrets", "get"));
    assert!(
        grants(&role["rules"], "", "secrets", "patch"),
        "the hub writes the member tokens it renews"
    );
    assert!(!grants(&role["rules"], "", "secrets", "create"));
    assert_lease_rules(&role["rules"], "tekfed-hub");

    // The API's policies, and the chart's own that confines the hub's
    // namespace deletes (kept whatever admissionPolicies says: it goes
    // with the RBAC grant it narrows).
    let policies = objects(&docs, "ValidatingAdmissionPolicy");
    let shipped = tekfed_api::admission::policies().len();
    assert_eq!(
        policies.len(),
        shipped + 1,
        "the admission policies are templates"
    );
    assert_eq!(
        objects(&docs, "ValidatingAdmissionPolicyBinding").len(),
        tekfed_api::admission::bindings().len() + 1
    );
    let without = helm.render(HUB_CHART, &["--set", "admissionPolicies.enabled=false"]);
    let left: Vec<&str> = objects(&without, "ValidatingAdmissionPolicy")
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str())
        .collect();
    assert_eq!(left, ["tekfed-hub-namespaces"]);

    // The CRDs come from the chart's crds/ folder (api/tests/chart_fresh.rs
    // keeps them equal to api/manifests/).
    let with_crds = helm.render(HUB_CHART, &["--include-crds"]);
    let mut crds: Vec<&str> = objects(&with_crds, "CustomResourceDefinition")
        .iter()
        .filter_map(|c| c["metadata"]["name"].as_str())
        .collect();
    crds.sort();
    let mut expected: Vec<String> = tekfed_api::manifests::crds()
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    expected.sort();
    assert_eq!(crds, expected);

    let no_leader = helm.render(HUB_CHART, &["--set", "leaderElection.enabled=false"]);
    let args = strings(
        &one(&no_leader, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"],
    )
    .join(" ");
    assert!(!args.contains("--leader-elect"), "{args}");
    assert!(!grants(
        &one(&no_leader, "Role")["rules"],
        "coordination.k8s.io",
        "leases",
        "update"
    ));
    let two = helm.run(&[
        "template",
        "t",
        chart(HUB_CHART).to_str().unwrap(),
        "--set",
        "replicas=2",
        "--set",
        "leaderElection.enabled=false",
    ]);
    assert!(!two.status.success());
    assert!(String::from_utf8_lossy(&two.stderr).contains("leaderElection.enabled"));
}

#[test]
fn the_agent_chart_renders_what_users_rely_on() {
    let helm = Helm::new();
    let docs = helm.render(
        AGENT_CHART,
        &[
            "--namespace",
            "tekfed-system",
            "--set",
            "clusterName=member-7",
        ],
    );
    let deployment = one(&docs, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(
        strings(&container["command"]),
        ["/usr/local/bin/tekfed-agent"]
    );
    let args = strings(&container["args"]);
    for wanted in [
        "--cluster-name=member-7",
        "--hub-kubeconfig=/etc/tekfed/hub/kubeconfig",
        "--heartbeat-interval=5",
        "--leader-elect",
        "--leader-elect-namespace=tekfed-system",
        "--leader-elect-lease-name=tekfed-agent-member-7",
        "--leader-elect-lease-duration=15",
        "--hub-kubeconfig-secret=tekfed-system/tekfed-hub-kubeconfig",
        "--hub-kubeconfig-secret-key=kubeconfig",
    ] {
        assert!(args.contains(&wanted), "agent args {args:?} lack {wanted}");
    }
    assert_eq!(
        pod["volumes"][0]["secret"],
        json!({"secretName": "tekfed-hub-kubeconfig", "items": [{"key": "kubeconfig", "path": "kubeconfig"}]})
    );
    assert_eq!(
        container["volumeMounts"][0],
        json!({"name": "hub-kubeconfig", "mountPath": "/etc/tekfed/hub", "readOnly": true})
    );
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);

    // The member guard, as join installs it, its terms from values.
    let guard = |docs: &[Value]| one(docs, "ValidatingAdmissionPolicy")["spec"].clone();
    let policy = |t: &tekfed_api::guard::Tenancy| {
        serde_json::to_value(tekfed_api::guard::member_policy(t)).unwrap()["spec"].clone()
    };
    assert_eq!(guard(&docs), policy(&Default::default()));
    assert_eq!(
        one(&docs, "ValidatingAdmissionPolicyBinding")["spec"]["policyName"],
        "tekfed-member-guard"
    );
    let terms = helm.render(
        AGENT_CHART,
        &[
            "--namespace",
            "tekfed-system",
            "--set",
            "clusterName=member-7",
            "--set",
            "guard.allowNamespaces={team-*,ci}",
            "--set",
            "guard.podSecurity=baseline",
            "--set",
            "guard.serviceAccounts={ci/deployer}",
        ],
    );
    let tenancy = tekfed_api::guard::Tenancy {
        allow_namespaces: vec!["team-*".into(), "ci".into()],
        pod_security: tekfed_api::guard::PodSecurityLevel::Baseline,
        service_accounts: vec!["ci/deployer".into()],
        ..Default::default()
    };
    assert_eq!(guard(&terms), policy(&tenancy));
    let dir = chart(AGENT_CHART);
    let out = helm.run(&[
        "template",
        "a",
        dir.to_str().unwrap(),
        "--set",
        "clusterName=m",
        "--set",
        "guard.denyNamespaces={a'b}",
    ]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr)
                .contains("is not a namespace or ServiceAccount name"),
        "a guard term that could inject CEL renders"
    );
    let without = helm.render(
        AGENT_CHART,
        &[
            "--namespace",
            "tekfed-system",
            "--set",
            "clusterName=member-7",
            "--set",
            "guard.create=false",
        ],
    );
    assert!(objects(&without, "ValidatingAdmissionPolicy").is_empty());
    assert!(
        objects(&docs, "Secret").is_empty(),
        "kubectl tekfed join creates the Secret"
    );
    assert!(
        objects(&docs, "Service").is_empty(),
        "no Service: the agent's metrics are scraped from its pod"
    );

    let cluster_role = one(&docs, "ClusterRole");
    assert_least_privilege(cluster_role);
    let rules = &cluster_role["rules"];
    assert!(grants(rules, "tekton.dev", "pipelineruns", "patch"));
    assert!(grants(rules, "tekton.dev", "taskruns", "watch"));
    assert!(
        grants(rules, "tekton.dev", "taskruns", "patch"),
        "cancelling a revoked run"
    );
    assert!(!grants(rules, "tekton.dev", "taskruns", "create"));
    assert!(!grants(rules, "tekton.dev", "pipelineruns", "create"));
    assert!(grants(rules, "", "pods", "list"));
    let roles = objects(&docs, "Role");
    assert_eq!(roles.len(), 3, "{roles:?}");
    let in_namespace = |ns: &str, name: &str| {
        *roles
            .iter()
            .find(|r| r["metadata"]["namespace"] == ns && r["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no Role {ns}/{name}: {roles:?}"))
    };
    assert_eq!(
        in_namespace("tekton-pipelines", "tekfed-member-agent-tekton-version")["rules"],
        json!([{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["pipelines-info"], "verbs": ["get"]}])
    );
    assert_lease_rules(
        &in_namespace("tekfed-system", "tekfed-member-agent-leader-election")["rules"],
        "tekfed-agent-member-7",
    );
    // The one Secret it writes its renewed hub token into.
    assert_eq!(
        in_namespace("tekfed-system", "tekfed-member-agent-hub-kubeconfig")["rules"],
        json!([{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["tekfed-hub-kubeconfig"], "verbs": ["get", "patch"]}])
    );
    let no_leader = helm.render(
        AGENT_CHART,
        &[
            "--set",
            "clusterName=member-7",
            "--set",
            "leaderElection.enabled=false",
        ],
    );
    let args = strings(
        &one(&no_leader, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"],
    )
    .join(" ");
    assert!(!args.contains("--leader-elect"), "{args}");
    assert_eq!(objects(&no_leader, "Role").len(), 2);

    let created = helm.render(
        AGENT_CHART,
        &[
            "--set",
            "clusterName=member-7",
            "--set",
            "hubKubeconfig.create=true",
            "--set",
            "hubKubeconfig.value=apiVersion: v1",
        ],
    );
    let secret = one(&created, "Secret");
    assert_eq!(secret["metadata"]["name"], "tekfed-hub-kubeconfig");
    assert_eq!(secret["data"]["kubeconfig"], "YXBpVmVyc2lvbjogdjE=");
}

/// Both charts name the metrics port, pass it to the binary, and probe
/// the binary's `/healthz` and `/readyz` there, with timings from values.
#[test]
fn both_charts_probe_liveness_and_readiness_on_the_metrics_port() {
    let helm = Helm::new();
    let container = |docs: &[Value]| {
        one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0].clone()
    };
    for (name, args) in [
        (HUB_CHART, vec![]),
        (AGENT_CHART, vec!["--set", "clusterName=member-7"]),
    ] {
        let container = container(&helm.render(name, &args));
        let flags = strings(&container["args"]);
        assert!(
            flags.contains(&"--metrics-addr=0.0.0.0:9090"),
            "{name}: {flags:?}"
        );
        assert_eq!(
            container["ports"][0],
            json!({"name": "metrics", "containerPort": 9090, "protocol": "TCP"}),
            "{name}"
        );
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            assert_eq!(
                container[probe]["httpGet"],
                json!({"path": path, "port": "metrics"}),
                "{name} {probe}"
            );
            for field in ["periodSeconds", "timeoutSeconds", "failureThreshold"] {
                assert!(container[probe][field].is_u64(), "{name} {probe} {field}");
            }
        }
    }
    let moved = container(&helm.render(
        AGENT_CHART,
        &[
            "--set",
            "clusterName=member-7",
            "--set",
            "metrics.port=9100",
            "--set",
            "probes.readiness.periodSeconds=30",
        ],
    ));
    assert!(strings(&moved["args"]).contains(&"--metrics-addr=0.0.0.0:9100"));
    assert_eq!(moved["ports"][0]["containerPort"], 9100);
    assert_eq!(moved["readinessProbe"]["periodSeconds"], 30);
    assert_eq!(moved["readinessProbe"]["httpGet"]["port"], "metrics");
}

#[test]
fn the_agent_chart_refuses_to_render_without_a_cluster_name() {
    let helm = Helm::new();
    let dir = chart(AGENT_CHART);
    let out = helm.run(&["template", "a", dir.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "rendered without clusterName");
    assert!(
        stderr.contains("clusterName is required"),
        "the error does not name clusterName: {stderr}"
    );
    let out = helm.run(&[
        "template",
        "a",
        dir.to_str().unwrap(),
        "--set",
        "clusterName=Member_1",
    ]);
    assert!(
        !out.status.success(),
        "rendered with an invalid clusterName"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid MemberCluster name"));
}

/// Requests the API server's authorizer refused (RBAC said no). The
/// server's request counters do not see these, nor does the agent log
/// each one, so this counter is the one witness.
async fn refused(client: &Client) -> u64 {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("a valid request");
    let text = client
        .request_text(request)
        .await
        .expect("reading /metrics");
    let counted: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("authorization_attempts_total{"))
        .filter_map(|l| {
            let value = l.rsplit(' ').next()?.parse::<f64>().ok()?;
            Some(if l.contains("\"allowed\"") {
                0.0
            } else {
                value
            })
        })
        .collect();
    assert!(
        !counted.is_empty(),
        "the API server no longer reports authorization_attempts_total"
    );
    counted.iter().sum::<f64>() as u64
}

/// A kubeconfig for `cluster` that authenticates as ServiceAccount
/// `namespace/name`, with a token from the API server: what the pod of a
/// Deployment using that ServiceAccount would be.
async fn service_account_kubeconfig(
    bed: &TestBed,
    cluster: &str,
    namespace: &str,
    name: &str,
) -> PathBuf {
    let client = bed.client(cluster).await.unwrap();
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let token = Api::<ServiceAccount>::namespaced(client, namespace)
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("a token for ServiceAccount {namespace}/{name}: {e}"))
        .status
        .expect("a TokenRequest answer has a status")
        .token;
    let mut kubeconfig: Value =
        serde_saphyr::from_str(&bed.cluster_kubeconfig(cluster).unwrap()).unwrap();
    let user = kubeconfig["contexts"][0]["context"]["user"].clone();
    kubeconfig["users"] = json!([{"name": user, "user": {"token": token}}]);
    let path = bed.dir().join(format!("{cluster}-{name}-sa.kubeconfig"));
    std::fs::write(&path, serde_saphyr::to_string(&kubeconfig).unwrap()).unwrap();
    path
}

/// The installed Deployment's container: its arguments and environment.
async fn installed_container(client: &Client, namespace: &str, name: &str) -> Value {
    let deployment = Api::<Deployment>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("Deployment {namespace}/{name} after helm install: {e}"));
    serde_json::to_value(deployment).unwrap()["spec"]["template"]["spec"]["containers"][0].clone()
}

fn env_of(container: &Value) -> Vec<(String, String)> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or_default().to_owned(),
                e["value"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

async fn exists<K>(client: &Client, namespace: &str, name: &str) -> bool
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .unwrap()
        .is_some()
}

async fn cluster_exists<K>(client: &Client, name: &str) -> bool
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::all(client.clone())
        .get_opt(name)
        .await
        .unwrap()
        .is_some()
}

/// The bed's hub starts without tekfed's API, so that what it has after
/// `helm install` came from the chart.
async fn assert_no_tekfed_api(hub: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(hub.clone());
    for crd in tekfed_api::manifests::crds() {
        let name = crd.metadata.name.unwrap_or_default();
        assert!(
            crds.get_opt(&name).await.unwrap().is_none(),
            "the bed's hub already has CRD {name}"
        );
    }
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(hub.clone());
    for policy in tekfed_api::admission::policies() {
        let name = policy.metadata.name.unwrap_or_default();
        assert!(
            policies.get_opt(&name).await.unwrap().is_none(),
            "the bed's hub already has admission policy {name}"
        );
    }
}

async fn create_namespace(client: &Client, name: &str) {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    };
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("creating namespace {name}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_charts_install_and_their_service_accounts_can_run_a_federation() {
    let began = Instant::now();
    let helm = Helm::new();
    let bed = TestBed::start_without_tekfed_api(1).await.unwrap();
    let hub = bed.client(HUB).await.unwrap();
    let member = bed.client(MEMBER).await.unwrap();
    assert_no_tekfed_api(&hub).await;
    let refused_before = (refused(&hub).await, refused(&member).await);

    // The hub chart, into a namespace of the test's: the CRDs from crds/,
    // the admission policies, the Deployment and its RBAC.
    let hub_ns = bed.namespace("tekfed-hub", &[HUB]).await.unwrap();
    let hub_chart = chart(HUB_CHART);
    let notes = helm
        .on_cluster(
            &bed,
            HUB,
            &[
                "install",
                HUB_CHART,
                hub_chart.to_str().unwrap(),
                "--namespace",
                &hub_ns,
            ],
        )
        .await;
    assert!(notes.contains("kubectl tekfed join"), "NOTES: {notes}");
    let crds: Api<CustomResourceDefinition> = Api::all(hub.clone());
    for crd in tekfed_api::manifests::crds() {
        let name = crd.metadata.name.unwrap();
        let installed = crds
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("CRD {name} after helm install: {e}"));
        let established = installed
            .status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .any(|c| c.type_ == "Established" && c.status == "True");
        assert!(established, "CRD {name} is not Established");
    }
    for name in ["tekfed-overrides", "tekfed-run-frozen"] {
        assert!(cluster_exists::<ValidatingAdmissionPolicy>(&hub, name).await);
        assert!(cluster_exists::<ValidatingAdmissionPolicyBinding>(&hub, name).await);
    }
    assert!(cluster_exists::<ClusterRole>(&hub, HUB_CHART).await);
    assert!(cluster_exists::<ClusterRoleBinding>(&hub, HUB_CHART).await);
    let ns = hub_ns.as_str();
    assert!(exists::<ServiceAccount>(&hub, ns, HUB_CHART).await);
    assert!(exists::<Role>(&hub, ns, HUB_CHART).await);
    assert!(exists::<RoleBinding>(&hub, ns, HUB_CHART).await);
    assert!(exists::<Service>(&hub, ns, "tekfed-hub-metrics").await);

    // The hub's pod, but for the kubelet: the installed arguments, as the
    // chart's ServiceAccount (metrics on a free local port instead).
    // The log API's serving certificate as the pod would mount it, from
    // the Secret the chart made.
    let container = installed_container(&hub, &hub_ns, HUB_CHART).await;
    let tls = Api::<Secret>::namespaced(hub.clone(), &hub_ns)
        .get("tekfed-hub-logs-tls")
        .await
        .unwrap()
        .data
        .unwrap();
    let tls_dir = bed.dir().join("hub-logs-tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    for file in ["tls.crt", "tls.key"] {
        std::fs::write(tls_dir.join(file), &tls[file].0).unwrap();
    }
    let mut args: Vec<String> = strings(&container["args"])
        .into_iter()
        .filter(|a| !a.starts_with("--metrics-addr=") && !a.starts_with("--logs-addr="))
        .map(|a| a.replace("/etc/tekfed/logs-tls", &tls_dir.to_string_lossy()))
        .collect();
    assert!(args.contains(&format!("--namespace={hub_ns}")), "{args:?}");
    let kubeconfig = service_account_kubeconfig(&bed, HUB, &hub_ns, HUB_CHART).await;
    args.extend([
        "--metrics-addr=127.0.0.1:0".to_owned(),
        "--logs-addr=127.0.0.1:0".to_owned(),
        format!("--kubeconfig={}", kubeconfig.display()),
    ]);
    let env = env_of(&container);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    bed.spawn("tekfed-hub", &binary("tekfed-hub"), &args, &env)
        .unwrap();
    // With the chart's identity the hub reads the front-proxy settings
    // from kube-system and serves run logs (a failure there would end it).
    eventually(
        "the hub to serve run logs as the chart's ServiceAccount",
        WAIT,
        || {
            let log = bed.log_of("tekfed-hub");
            async move { log.contains("serving run logs").then_some(()) }
        },
    )
    .await;

    // A member, its kubeconfig Secret in the hub's namespace, as join does.
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("member-1-kubeconfig".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "kubeconfig".to_owned(),
            ByteString(bed.cluster_kubeconfig(MEMBER).unwrap().into_bytes()),
        )])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(hub.clone(), &hub_ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let mc: MemberCluster = serde_json::from_value(json!({
        "apiVersion": "tekfed.io/v1alpha1", "kind": "MemberCluster",
        "metadata": {"name": MEMBER},
        "spec": {"secretRef": {"name": "member-1-kubeconfig"}},
    }))
    .unwrap();
    Api::<MemberCluster>::all(hub.clone())
        .create(&PostParams::default(), &mc)
        .await
        .unwrap();

    // The agent chart on the member, its hub kubeconfig Secret created from
    // values (the narrow hub identity join would make).
    let agent_ns = bed.namespace("tekfed-agent", &[MEMBER]).await.unwrap();
    create_namespace(&member, "tekton-pipelines").await;
    let hub_identity = bed.agent_identity(MEMBER).await.unwrap();
    let agent_chart = chart(AGENT_CHART);
    helm.on_cluster(
        &bed,
        MEMBER,
        &[
            "install",
            AGENT_CHART,
            agent_chart.to_str().unwrap(),
            "--namespace",
            &agent_ns,
            "--set",
            &format!("clusterName={MEMBER}"),
            "--set",
            "hubKubeconfig.create=true",
            "--set-file",
            &format!("hubKubeconfig.value={}", hub_identity.display()),
            "--set",
            "heartbeatInterval=1",
        ],
    )
    .await;
    let ns = agent_ns.as_str();
    assert!(exists::<ServiceAccount>(&member, ns, AGENT_CHART).await);
    assert!(cluster_exists::<ClusterRole>(&member, AGENT_CHART).await);
    assert!(cluster_exists::<ClusterRoleBinding>(&member, AGENT_CHART).await);

    // The agent's pod, but for the kubelet: the hub kubeconfig read from
    // the Secret the Deployment mounts, where its argument says.
    let container = installed_container(&member, &agent_ns, AGENT_CHART).await;
    let deployment = Api::<Deployment>::namespaced(member.clone(), &agent_ns)
        .get(AGENT_CHART)
        .await
        .unwrap();
    let pod = serde_json::to_value(deployment).unwrap()["spec"]["template"]["spec"].clone();
    let mount = &container["volumeMounts"][0];
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume")
        .clone();
    let item = &volume["secret"]["items"][0];
    let mounted_path = format!(
        "{}/{}",
        mount["mountPath"].as_str().unwrap(),
        item["path"].as_str().unwrap()
    );
    let secret = Api::<Secret>::namespaced(member.clone(), &agent_ns)
        .get(volume["secret"]["secretName"].as_str().unwrap())
        .await
        .unwrap();
    let hub_kubeconfig = bed.dir().join("agent-mounted-hub.kubeconfig");
    std::fs::write(
        &hub_kubeconfig,
        &secret.data.unwrap()[item["key"].as_str().unwrap()].0,
    )
    .unwrap();
    let mut args: Vec<String> = Vec::new();
    for arg in strings(&container["args"]) {
        match arg.strip_prefix("--hub-kubeconfig=") {
            Some(path) => {
                assert_eq!(path, mounted_path, "the agent reads the mounted Secret");
                args.push(format!("--hub-kubeconfig={}", hub_kubeconfig.display()));
            }
            // A free local port: no pod network of its own here.
            None if arg.starts_with("--metrics-addr=") => {
                args.push("--metrics-addr=127.0.0.1:0".to_owned())
            }
            None => args.push(arg.to_owned()),
        }
    }
    let kubeconfig = service_account_kubeconfig(&bed, MEMBER, &agent_ns, AGENT_CHART).await;
    args.push(format!("--kubeconfig={}", kubeconfig.display()));
    let env = env_of(&container);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    bed.spawn("agent-member-1", &binary("tekfed-agent"), &args, &env)
        .unwrap();

    wait_condition(&bed, &[MEMBER.to_owned()], "Ready", WAIT)
        .await
        .unwrap();

    // A template propagated and a PipelineRun run through the hub, held
    // and released by the agent, and its success mirrored back.
    let runs_ns = bed.namespace("helm-runs", &[HUB]).await.unwrap();
    let task: FederatedTask = serde_json::from_value(json!({
        "apiVersion": "tekfed.io/v1alpha1", "kind": "FederatedTask",
        "metadata": {"name": "greet", "namespace": runs_ns},
        "spec": {
            "template": {"spec": {
                "stepTemplate": {"securityContext": tekfed_api::guard::restricted_security_context()},
                "steps": [{"name": "s", "image": "ubuntu", "script": "true"}],
            }},
            "placement": {"clusters": [{"name": MEMBER}]},
        },
    }))
    .unwrap();
    let tasks: Api<FederatedTask> = Api::namespaced(hub.clone(), &runs_ns);
    tasks.create(&PostParams::default(), &task).await.unwrap();
    let run: FederatedPipelineRun = serde_json::from_value(json!({
        "apiVersion": "tekfed.io/v1alpha1", "kind": "FederatedPipelineRun",
        "metadata": {"name": "train", "namespace": runs_ns},
        "spec": {
            "template": {"spec": {"pipelineSpec": {"tasks": [{"name": "t", "taskRef": {"name": "greet"}}]}}},
            "placement": {"clusters": [{"name": MEMBER}]},
        },
    }))
    .unwrap();
    let runs: Api<FederatedPipelineRun> = Api::namespaced(hub.clone(), &runs_ns);
    runs.create(&PostParams::default(), &run).await.unwrap();
    eventually("the FederatedTask to be Propagated", WAIT, || {
        let tasks = tasks.clone();
        async move {
            let task = serde_json::to_value(tasks.get("greet").await.ok()?).ok()?;
            task["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Propagated" && c["status"] == "True")
                .then_some(())
        }
    })
    .await;
    let phase = eventually("the FederatedPipelineRun to finish", WAIT, || {
        let runs = runs.clone();
        async move {
            let phase = runs.get("train").await.ok()?.status?.phase?;
            matches!(
                phase,
                RunPhase::Succeeded | RunPhase::Failed | RunPhase::Cancelled
            )
            .then_some(phase)
        }
    })
    .await;
    assert_eq!(
        phase,
        RunPhase::Succeeded,
        "hub log: {}",
        bed.log_of("tekfed-hub")
    );
    let member_run = Api::<DynamicObject>::namespaced_with(
        member.clone(),
        &runs_ns,
        &tekton_resource("PipelineRun"),
    )
    .get("train")
    .await
    .unwrap();
    assert!(
        member_run.data["spec"].get("status").is_none(),
        "the agent released the held PipelineRun"
    );

    // Both lead through the Leases the charts name (leader election is on
    // by default), in their release namespaces.
    for (client, ns, lease) in [
        (&hub, &hub_ns, "tekfed-hub".to_owned()),
        (&member, &agent_ns, format!("tekfed-agent-{MEMBER}")),
    ] {
        let lease = Api::<Lease>::namespaced(client.clone(), ns)
            .get(&lease)
            .await
            .unwrap_or_else(|e| panic!("Lease {ns}/{lease}: {e}"));
        assert!(
            lease
                .spec
                .and_then(|s| s.holder_identity)
                .is_some_and(|h| !h.is_empty()),
            "Lease {ns} has no holder"
        );
    }

    // Not one request of the hub or the agent was refused.
    let refused_after = (refused(&hub).await, refused(&member).await);
    assert_eq!(
        refused_after,
        refused_before,
        "requests refused by RBAC (hub, member): the charts' roles lack something the \
         binaries do (the agent does not log every refusal)\nhub log:\n{}\nagent log:\n{}",
        bed.log_of("tekfed-hub"),
        bed.log_of("agent-member-1")
    );

    // Uninstalling removes the Deployments, and keeps the CRDs (and so the
    // federated objects).
    bed.stop("tekfed-hub");
    bed.stop("agent-member-1");
    helm.on_cluster(
        &bed,
        MEMBER,
        &["uninstall", AGENT_CHART, "--namespace", &agent_ns],
    )
    .await;
    helm.on_cluster(&bed, HUB, &["uninstall", HUB_CHART, "--namespace", &hub_ns])
        .await;
    eventually(
        "helm uninstall to remove both Deployments",
        WAIT,
        || async {
            let gone = !exists::<Deployment>(&hub, &hub_ns, HUB_CHART).await
                && !exists::<Deployment>(&member, &agent_ns, AGENT_CHART).await;
            gone.then_some(())
        },
    )
    .await;
    assert!(!cluster_exists::<ClusterRole>(&hub, HUB_CHART).await);
    assert!(cluster_exists::<CustomResourceDefinition>(&hub, "federatedtasks.tekfed.io").await);
    assert!(tasks.get_opt("greet").await.unwrap().is_some());
    println!("helm install test took {:?}", began.elapsed());
}
