//! A running federation on a test bed: the member kubeconfig Secrets and
//! `MemberCluster`s on the hub, and the real `tekfed-hub` binary running
//! against it as its own process.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::runtime::reflector::Lookup;
use serde_json::json;
use tekfed_api::MemberCluster;

use crate::{HUB, TestBed, TestBedError, binary};

/// Where the hub looks for member Secrets in the test bed.
pub const HUB_NAMESPACE: &str = "tekfed-system";
const MANAGER: &str = "tekfed-tests";

impl TestBed {
    /// A kubeconfig for one cluster alone, with inline credentials, as the
    /// hub reads from a member's Secret.
    pub fn cluster_kubeconfig(&self, cluster: &str) -> Result<String, TestBedError> {
        let text =
            std::fs::read_to_string(self.kubeconfig()).map_err(|source| TestBedError::Io {
                what: "reading the test bed kubeconfig".into(),
                source,
            })?;
        let mut doc: serde_json::Value =
            serde_saphyr::from_str(&text).map_err(|e| TestBedError::Yaml {
                path: self.kubeconfig().to_owned(),
                message: e.to_string(),
            })?;
        let keep = |list: &serde_json::Value| -> serde_json::Value {
            json!(
                list.as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| c["name"] == cluster)
                    .collect::<Vec<_>>()
            )
        };
        doc["clusters"] = keep(&doc["clusters"]);
        doc["contexts"] = keep(&doc["contexts"]);
        doc["current-context"] = json!(cluster);
        Ok(serde_saphyr::to_string(&doc).expect("a JSON value always serializes to YAML"))
    }

    /// Register `cluster` with the hub: its kubeconfig Secret in
    /// `tekfed-system` and a `MemberCluster` with `labels`.
    pub async fn register_member(
        &self,
        cluster: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), TestBedError> {
        let kubeconfig = self.cluster_kubeconfig(cluster)?;
        self.register_member_with(cluster, &kubeconfig, labels)
            .await
    }

    /// Register a `MemberCluster` named `name` whose Secret holds `kubeconfig` as given.
    pub async fn register_member_with(
        &self,
        name: &str,
        kubeconfig: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), TestBedError> {
        let client = self.client(HUB).await?;
        let kube_error = |what: String| move |source| TestBedError::Kube { what, source };
        let apply = PatchParams::apply(MANAGER).force();
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": HUB_NAMESPACE}});
        namespaces
            .patch(HUB_NAMESPACE, &apply, &Patch::Apply(&ns))
            .await
            .map_err(kube_error(format!("creating namespace {HUB_NAMESPACE}")))?;
        let secret_name = format!("{name}-kubeconfig");
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(secret_name.clone()),
                namespace: Some(HUB_NAMESPACE.into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                "kubeconfig".to_owned(),
                ByteString(kubeconfig.as_bytes().to_vec()),
            )])),
            ..Default::default()
        };
        let secrets: Api<Secret> = Api::namespaced(client.clone(), HUB_NAMESPACE);
        secrets
            .patch(&secret_name, &apply, &Patch::Apply(&secret))
            .await
            .map_err(kube_error(format!("writing Secret {secret_name}")))?;
        let mc = json!({
            "apiVersion": "tekfed.io/v1alpha1",
            "kind": "MemberCluster",
            "metadata": {"name": name, "labels": labels},
            // Pod Security `baseline` for the namespaces tekfed creates: the
            // tests run Tekton's own examples, whose steps set no
            // securityContext (`restricted`, the default, is proven with
            // `kubectl tekfed join` in tests/tests/hostile_member.rs).
            "spec": {"secretRef": {"name": secret_name}, "tenancy": {"podSecurity": "baseline"}},
        });
        let clusters: Api<MemberCluster> = Api::all(client);
        clusters
            .patch(name, &apply, &Patch::Apply(&mc))
            .await
            .map_err(kube_error(format!("writing MemberCluster {name}")))?;
        Ok(())
    }

    /// Start the real `tekfed-hub` binary against the hub, with `args`
    /// added. It is stopped with the test bed (or by [`TestBed::stop`]).
    pub fn start_hub(&self, name: &str, args: &[&str]) -> Result<u32, TestBedError> {
        let mut all = vec![
            "--kubeconfig".to_owned(),
            self.kubeconfig().to_string_lossy().into_owned(),
            "--context".into(),
            HUB.into(),
            "--namespace".into(),
            HUB_NAMESPACE.into(),
            "--probe-interval".into(),
            "2".into(),
            "--metrics-addr".into(),
            "127.0.0.1:0".into(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        self.spawn(
            name,
            &binary("tekfed-hub"),
            &all,
            &[("RUST_LOG", "info,tekfed_hub=debug")],
        )
    }
}

/// The shared test bed with `member-1` and `member-2` registered (labels
/// `tekfed.io/test-member=<name>`; `member-3` is left for tests to join)
/// and one hub running: for propagation tests that share a federation,
/// each in namespaces of their own.
pub fn shared_federation() -> &'static TestBed {
    static STARTED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    once_on_shared(&STARTED, |bed| async move {
        for member in ["member-1".to_owned(), "member-2".to_owned()] {
            let labels = BTreeMap::from([("tekfed.io/test-member".to_owned(), member.clone())]);
            bed.register_member(&member, labels)
                .await
                .map_err(|e| e.to_string())?;
        }
        bed.start_hub("tekfed-hub", &["--deletion-timeout", "5"])
            .map_err(|e| e.to_string())?;
        wait_reachable(
            bed,
            &["member-1".into(), "member-2".into()],
            Duration::from_secs(60),
        )
        .await
    })
}

/// Set the shared test bed up once per test binary with `setup`, on a
/// runtime of its own (tests run on many runtimes), failing every test
/// that asks if it failed.
fn once_on_shared<F, Fut>(
    cell: &'static std::sync::OnceLock<Result<(), String>>,
    setup: F,
) -> &'static TestBed
where
    F: FnOnce(&'static TestBed) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let bed = crate::shared();
    let started = cell.get_or_init(|| {
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(setup(bed))
        })
        .join()
        .unwrap_or_else(|_| Err("setting up the federation panicked".into()))
    });
    if let Err(e) = started {
        panic!("the federation did not start: {e}");
    }
    bed
}

/// Wait until the hub reports each of `clusters` `Reachable=True`.
pub async fn wait_reachable(
    bed: &TestBed,
    clusters: &[String],
    timeout: Duration,
) -> Result<(), String> {
    wait_condition(bed, clusters, "Reachable", timeout).await
}

impl TestBed {
    /// An agent's narrow hub identity for `cluster`: a client certificate
    /// for user `tekfed-agent-<cluster>`, allowed (by a Role in the
    /// cluster's hub namespace) to read its RunAssignments and write their
    /// status and its MemberReport's status, and nothing else. Returns the
    /// kubeconfig path.
    pub async fn agent_identity(&self, cluster: &str) -> Result<std::path::PathBuf, TestBedError> {
        let user = format!("tekfed-agent-{cluster}");
        let namespace = tekfed_api::cluster_namespace(cluster);
        let client = self.client(HUB).await?;
        let kube_error = |what: String| move |source| TestBedError::Kube { what, source };
        let apply = PatchParams::apply(MANAGER).force();
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
        Api::<Namespace>::all(client.clone())
            .patch(&namespace, &apply, &Patch::Apply(&ns))
            .await
            .map_err(kube_error(format!("creating namespace {namespace}")))?;
        let role = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "tekfed-agent", "namespace": namespace},
            "rules": tekfed_api::rbac::policy_rules(tekfed_api::rbac::agent_on_hub()),
        });
        let binding = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "tekfed-agent", "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tekfed-agent"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        });
        let roles: Api<k8s_openapi::api::rbac::v1::Role> =
            Api::namespaced(client.clone(), &namespace);
        roles
            .patch("tekfed-agent", &apply, &Patch::Apply(&role))
            .await
            .map_err(kube_error("creating the agent Role".into()))?;
        let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> =
            Api::namespaced(client, &namespace);
        bindings
            .patch("tekfed-agent", &apply, &Patch::Apply(&binding))
            .await
            .map_err(kube_error("creating the agent RoleBinding".into()))?;

        let io = |what: &str| {
            let what = what.to_owned();
            move |source| TestBedError::Io { what, source }
        };
        let ca_key =
            std::fs::read_to_string(self.dir().join("ca.key")).map_err(io("reading the CA key"))?;
        let ca =
            std::fs::read_to_string(self.dir().join("ca.crt")).map_err(io("reading the CA"))?;
        let cert = crate::pki::client_cert(&ca_key, &user).map_err(TestBedError::Pki)?;
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let hub = self
            .clusters()
            .iter()
            .find(|c| c.name == HUB)
            .expect("the test bed has a hub");
        let kubeconfig = json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "hub",
            "clusters": [{"name": "hub", "cluster": {"server": hub.server, "certificate-authority-data": b64(&ca)}}],
            "users": [{"name": user, "user": {"client-certificate-data": b64(&cert.cert_pem), "client-key-data": b64(&cert.key_pem)}}],
            "contexts": [{"name": "hub", "context": {"cluster": "hub", "user": user}}],
        });
        let path = self.dir().join(format!("agent-{cluster}-hub.kubeconfig"));
        std::fs::write(
            &path,
            serde_saphyr::to_string(&kubeconfig).expect("JSON serializes to YAML"),
        )
        .map_err(io("writing the agent kubeconfig"))?;
        Ok(path)
    }

    /// Start `tekfed-agent` for `cluster` with its narrow hub identity.
    pub async fn start_agent(
        &self,
        cluster: &str,
        heartbeat_secs: f64,
    ) -> Result<u32, TestBedError> {
        self.start_agent_with(cluster, heartbeat_secs, &[]).await
    }

    /// [`TestBed::start_agent`] with `extra` arguments.
    pub async fn start_agent_with(
        &self,
        cluster: &str,
        heartbeat_secs: f64,
        extra: &[&str],
    ) -> Result<u32, TestBedError> {
        let hub_kubeconfig = self.agent_identity(cluster).await?;
        let mut args = vec![
            "--cluster-name".to_owned(),
            cluster.to_owned(),
            "--kubeconfig".into(),
            self.kubeconfig().to_string_lossy().into_owned(),
            "--context".into(),
            cluster.to_owned(),
            "--hub-kubeconfig".into(),
            hub_kubeconfig.to_string_lossy().into_owned(),
            "--heartbeat-interval".into(),
            heartbeat_secs.to_string(),
            "--metrics-addr".into(),
            "127.0.0.1:0".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        self.spawn(
            &format!("agent-{cluster}"),
            &binary("tekfed-agent"),
            &args,
            &[("RUST_LOG", "info")],
        )
    }
}

impl TestBed {
    /// Where [`TestBed::start_joined_agent`] writes `cluster`'s hub
    /// kubeconfig (the file the agent reads, as a pod its mounted Secret).
    pub fn joined_agent_kubeconfig(&self, cluster: &str) -> std::path::PathBuf {
        self.dir().join(format!("{cluster}-hub.kubeconfig"))
    }

    /// Run `cluster`'s agent with the hub identity `kubectl tekfed join`
    /// left on the member (Secret `tekfed-system/tekfed-hub-kubeconfig`,
    /// where it renews its token, copied once to a file: no kubelet copies
    /// it again), heartbeating every second, as the agent chart would run
    /// it.
    pub async fn start_joined_agent(&self, cluster: &str) -> Result<u32, TestBedError> {
        self.start_joined_agent_with(cluster, &[]).await
    }

    /// [`TestBed::start_joined_agent`] with `extra` arguments.
    pub async fn start_joined_agent_with(
        &self,
        cluster: &str,
        extra: &[&str],
    ) -> Result<u32, TestBedError> {
        let secrets: Api<Secret> = Api::namespaced(self.client(cluster).await?, "tekfed-system");
        let secret = secrets
            .get("tekfed-hub-kubeconfig")
            .await
            .map_err(|source| TestBedError::Kube {
                what: format!("reading the agent's hub kubeconfig join left on {cluster}"),
                source,
            })?;
        let kubeconfig = secret
            .data
            .and_then(|d| d.get("kubeconfig").cloned())
            .map(|b| b.0)
            .unwrap_or_default();
        let path = self.joined_agent_kubeconfig(cluster);
        std::fs::write(&path, kubeconfig).map_err(|source| TestBedError::Io {
            what: format!("writing {}", path.display()),
            source,
        })?;
        let args: Vec<String> = [
            "--cluster-name",
            cluster,
            "--kubeconfig",
            &self.kubeconfig().to_string_lossy(),
            "--context",
            cluster,
            "--hub-kubeconfig",
            &path.to_string_lossy(),
            "--hub-kubeconfig-secret",
            "tekfed-system/tekfed-hub-kubeconfig",
            "--heartbeat-interval",
            "1",
            "--metrics-addr",
            "127.0.0.1:0",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
        self.spawn(
            &format!("agent-{cluster}"),
            &binary("tekfed-agent"),
            &args,
            &[("RUST_LOG", "info")],
        )
    }
}

/// The shared test bed as a whole federation for run tests: all three
/// members registered (label `tekfed.io/test-member=<name>`), the hub and
/// an agent per member, every member Ready. Each member's own Tekton runs
/// the runs.
pub fn run_federation() -> &'static TestBed {
    static STARTED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    once_on_shared(&STARTED, |bed| federate(bed, &[]))
}

/// Make `bed` a whole federation: every member registered (label
/// `tekfed.io/test-member=<name>`), the hub (with `hub_args`) and an agent
/// per member; returns once every member is Ready.
pub async fn federate(bed: &TestBed, hub_args: &[&str]) -> Result<(), String> {
    federate_with(bed, hub_args, |_| vec![]).await
}

/// [`federate`], each member's agent started with `agent_args(member)` too.
pub async fn federate_with(
    bed: &TestBed,
    hub_args: &[&str],
    agent_args: impl Fn(&str) -> Vec<&'static str>,
) -> Result<(), String> {
    let members = bed.members();
    for member in &members {
        let labels = BTreeMap::from([("tekfed.io/test-member".to_owned(), member.clone())]);
        bed.register_member(member, labels)
            .await
            .map_err(|e| e.to_string())?;
    }
    // The hub's default grace (30 s) unless the caller sets one: a shorter
    // one declares live members lost when a loaded machine delays their
    // heartbeats, which fails their started runs.
    let mut args = vec![];
    if !hub_args.contains(&"--heartbeat-grace") {
        args.extend(["--heartbeat-grace", "30"]);
    }
    args.extend_from_slice(hub_args);
    bed.start_hub("tekfed-hub", &args)
        .map_err(|e| e.to_string())?;
    for member in &members {
        bed.start_agent_with(member, 1.0, &agent_args(member))
            .await
            .map_err(|e| e.to_string())?;
    }
    wait_condition(bed, &members, "Ready", Duration::from_secs(90)).await
}

/// Wait until the hub reports `condition=True` on each of `clusters`.
pub async fn wait_condition(
    bed: &TestBed,
    clusters: &[String],
    condition: &str,
    timeout: Duration,
) -> Result<(), String> {
    let api: Api<MemberCluster> = Api::all(bed.client(HUB).await.map_err(|e| e.to_string())?);
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let list = api
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let ok = |name: &String| {
            list.items.iter().any(|mc| {
                mc.name().as_deref() == Some(name.as_str())
                    && mc.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == condition && c.status == "True")
                    })
            })
        };
        if clusters.iter().all(ok) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            let agents: Vec<String> = clusters
                .iter()
                .map(|c| bed.log_of(&format!("agent-{c}")))
                .collect();
            return Err(format!(
                "members {clusters:?} not {condition} after {timeout:?}; hub log: {}\nagent logs: {}",
                bed.log_of("tekfed-hub"),
                agents.join("\n---\n")
            ));
        }
        tokio::time::sleep(crate::POLL_INTERVAL).await;
    }
}

impl TestBed {
    /// The address a hub or agent started by [`TestBed::spawn`] (named
    /// `name`) serves metrics and probes on, from its log.
    pub fn metrics_addr(&self, name: &str) -> Option<String> {
        let log = std::fs::read_to_string(self.dir().join(format!("{name}.log"))).ok()?;
        let line = log.lines().rev().find(|l| l.contains("serving metrics"))?;
        let addr = line.split("addr=").nth(1)?.split_whitespace().next()?;
        Some(addr.trim_matches('"').to_owned())
    }
}

/// `GET /metrics` from a metrics address, as text.
pub fn scrape(addr: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: tekfed\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

/// A TaskRun template (for `spec.template`) with one step that Tekton runs
/// for `duration` (a Go duration, e.g. `2s`; kwok's default when `None`),
/// and `annotations` added (see [`crate::member`] for what kwok reads).
pub fn task_run_template(
    duration: Option<&str>,
    annotations: serde_json::Value,
) -> serde_json::Value {
    let mut template = json!({
        "metadata": {"annotations": annotations},
        // What Pod Security `restricted` admits: members joined with
        // `kubectl tekfed join` label the namespaces tekfed creates so.
        "spec": {"taskSpec": {
            "stepTemplate": {"securityContext": tekfed_api::guard::restricted_security_context()},
            "steps": [{"name": "build", "image": "busybox", "script": "make"}],
        }},
    });
    if !template["metadata"]["annotations"].is_object() {
        template["metadata"]["annotations"] = json!({});
    }
    if let Some(duration) = duration {
        template["metadata"]["annotations"][crate::member::ANNOTATION_DURATION] = json!(duration);
    }
    template
}

/// A PipelineRun template (for `spec.template`) of one task, `t`, whose
/// step runs for `duration` as in [`task_run_template`].
pub fn pipeline_run_template(duration: Option<&str>) -> serde_json::Value {
    let task = task_run_template(duration, json!({}));
    json!({
        "metadata": task["metadata"],
        "spec": {"pipelineSpec": {"tasks": [{"name": "t", "taskSpec": task["spec"]["taskSpec"]}]}},
    })
}

/// Create `count` FederatedTaskRuns `job-000`… in `ns`, placed on every
/// member of the test federation, each running for `duration` (a Go
/// duration; kwok's short default when `None`); returns their names.
pub async fn create_task_runs(
    hub: &kube::Client,
    ns: &str,
    count: usize,
    duration: Option<&str>,
) -> Vec<String> {
    use tekfed_api::FederatedTaskRun;
    let api: Api<FederatedTaskRun> = Api::namespaced(hub.clone(), ns);
    let names: Vec<String> = (0..count).map(|i| format!("job-{i:03}")).collect();
    for name in &names {
        let run: FederatedTaskRun = serde_json::from_value(json!({
            "apiVersion": "tekfed.io/v1alpha1",
            "kind": "FederatedTaskRun",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "template": task_run_template(duration, json!({})),
                "placement": {"clusterSelector": {"matchExpressions": [{"key": "tekfed.io/test-member", "operator": "Exists"}]}},
            },
        }))
        .expect("a valid FederatedTaskRun");
        api.create(&kube::api::PostParams::default(), &run)
            .await
            .expect("creating a FederatedTaskRun");
    }
    names
}

/// Every FederatedTaskRun in `api`'s namespace: name, phase, and the
/// reason of its `Scheduled` condition.
pub async fn run_phases(
    api: &Api<tekfed_api::FederatedTaskRun>,
) -> Vec<(String, Option<tekfed_api::RunPhase>, Option<String>)> {
    api.list(&Default::default())
        .await
        .expect("listing FederatedTaskRuns")
        .items
        .into_iter()
        .map(|r| {
            let status = r.status.clone().unwrap_or_default();
            let reason = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Scheduled")
                .map(|c| c.reason.clone());
            (
                r.metadata.name.clone().unwrap_or_default(),
                status.phase,
                reason,
            )
        })
        .collect()
}

/// Wait until every FederatedTaskRun in `api`'s namespace has Succeeded.
pub async fn wait_all_succeeded(
    api: &Api<tekfed_api::FederatedTaskRun>,
    what: &str,
    timeout: Duration,
) {
    crate::eventually(what, timeout, || async {
        run_phases(api)
            .await
            .iter()
            .all(|(_, p, _)| *p == Some(tekfed_api::RunPhase::Succeeded))
            .then_some(())
    })
    .await;
}

/// The name of [`unanswered_webhook`].
pub const UNANSWERED_WEBHOOK: &str = "test-unanswered";

/// A webhook on PipelineRun creates in `ns` that no one answers: a member
/// given it fails those creates with a 500 (not a refusal), so the hub
/// tries again, and a run placed there is never created, never released.
pub fn unanswered_webhook(ns: &str) -> ValidatingWebhookConfiguration {
    let webhook = json!({
        "metadata": {"name": UNANSWERED_WEBHOOK},
        "webhooks": [{
            "name": "unanswered.test.tekfed.io",
            "clientConfig": {"url": "https://127.0.0.1:1/validate"},
            "rules": [{"apiGroups": ["tekton.dev"], "apiVersions": ["*"],
                       "operations": ["CREATE"], "resources": ["pipelineruns"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 2,
        }],
    });
    serde_json::from_value(webhook).expect("a valid ValidatingWebhookConfiguration")
}
