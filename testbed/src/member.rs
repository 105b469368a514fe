//! What runs on each member of the test bed besides its API server, so that
//! member runs are executed by the real Tekton and not a stand-in:
//!
//! - Tekton's own controller and webhook (`tekton-controller`,
//!   `tekton-webhook`, built by `hack/k8s-bins.sh` from
//!   `github.com/tektoncd/pipeline`), with all eight Tekton CRDs, its
//!   namespace and its `config-*` ConfigMaps of the same version. The
//!   webhook defaults and validates Tekton objects at admission as on a
//!   real cluster: its webhook configurations name the Service
//!   `tekton-pipelines-webhook`, which here is an `ExternalName` Service
//!   for `127.0.0.1`, and the API server dials the webhook's own port
//!   (given in the configurations). The webhook makes its certificate and
//!   fills in each configuration's `caBundle` and rules itself.
//! - `kube-scheduler`, which binds Tekton's pods to the one Node;
//! - `kube-controller-manager` with only the `serviceaccount` (every
//!   namespace gets its `default` ServiceAccount, which Tekton reads for
//!   every run) and `garbagecollector` (pods go with their TaskRun)
//!   controllers;
//! - `kwok`, which plays the pods bound to a fake Node `kwok-node`: its own
//!   stages make a pod Running and delete a pod being deleted, and
//!   `testbed/kwok/tekton-pods.yaml` ends a TaskRun's pod as a test asks
//!   (see that file for the annotations). It also serves the kubelet's
//!   container logs, so `kubectl logs` works: a step prints what its
//!   environment variable `TEKFED_TEST_LOG` says (see [`crate::logs`]).
//!
//! Nothing here knows about tekfed: it is the member cluster a tekfed user
//! would have.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, ServiceAccount};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::testbed::{free_port, read_yaml};
use crate::{ClusterInfo, POLL_INTERVAL, TestBed, TestBedError};

/// Tekton's namespace on a member (`SYSTEM_NAMESPACE` of its controller).
pub const TEKTON_NAMESPACE: &str = "tekton-pipelines";
impl TestBed {
    /// `spec` as `member`'s Tekton admits a `kind` (`Task`, `Pipeline`, …)
    /// in `namespace`: a dry-run create, defaulted by Tekton's webhook. What
    /// a member holds of a template that tekfed sent is exactly this.
    pub async fn admitted(&self, member: &str, namespace: &str, kind: &str, spec: &Value) -> Value {
        let plural = format!("{}s", kind.to_lowercase());
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client(member).await.expect("a client for the member"),
            namespace,
            &tekton(kind, &plural),
        );
        let probe: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "tekton.dev/v1", "kind": kind,
            "metadata": {"name": "admission-probe", "namespace": namespace},
            "spec": spec,
        }))
        .expect("a valid object");
        let dry_run = PostParams {
            dry_run: true,
            ..Default::default()
        };
        let admitted = api
            .create(&dry_run, &probe)
            .await
            .unwrap_or_else(|e| panic!("{member}'s Tekton refuses the {kind}: {e}"));
        admitted.data["spec"].clone()
    }
}

/// The fake Node kwok plays.
pub const NODE: &str = "kwok-node";
const MANAGER: &str = "tekfed-testbed";
/// How long a member's Tekton may take to come up on a busy 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(240);
/// Tekton's pod annotations that play a run (see `testbed/kwok/tekton-pods.yaml`).
pub const TEKTON_POD_STAGES: &str = include_str!("../kwok/tekton-pods.yaml");
/// Run for this long (a Go duration, e.g. `2s`) before the steps end.
pub const ANNOTATION_DURATION: &str = "tekfed.io/test-duration";
/// This step (its name in the Task) exits non-zero and the run fails.
pub const ANNOTATION_FAIL_STEP: &str = "tekfed.io/test-fail-step";
/// The exit code of the failing step (default 1).
pub const ANNOTATION_EXIT_CODE: &str = "tekfed.io/test-exit-code";

impl TestBed {
    /// Install Tekton's objects on `member` and start its Tekton controller
    /// and webhook, scheduler, controller-manager and kwok; return once a
    /// Task with a nameless step is accepted (the webhook defaults it),
    /// an invalid one is refused by the webhook, the Node is Ready and the
    /// `default` namespace has its `default` ServiceAccount.
    pub(crate) async fn start_member_stack(
        &self,
        member: &ClusterInfo,
    ) -> Result<(), TestBedError> {
        let client = self.client(&member.name).await?;
        let kubeconfig = self.dir().join(format!("{}.kubeconfig", member.name));
        let text = self.cluster_kubeconfig(&member.name)?;
        std::fs::write(&kubeconfig, text).map_err(|source| TestBedError::Io {
            what: format!("writing {}", kubeconfig.display()),
            source,
        })?;
        let webhook_port = free_port()?;
        self.install_tekton_config(&client, &member.name, Some(webhook_port))
            .await?;
        create_node(&client, &member.name).await?;
        crate::logs::prepare(&client, self.bin_dir(), self.dir(), &member.name).await?;
        let kubelet_port = free_port()?;

        let bin = |name: &str| self.bin_dir().join(name);
        let kc = kubeconfig.to_string_lossy().into_owned();
        let name = &member.name;
        self.spawn(
            &format!("kube-controller-manager-{name}"),
            &bin("kube-controller-manager"),
            &[
                format!("--kubeconfig={kc}"),
                "--controllers=serviceaccount,garbagecollector".into(),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
                "--concurrent-gc-syncs=5".into(),
            ],
            &[],
        )?;
        self.spawn(
            &format!("kube-scheduler-{name}"),
            &bin("kube-scheduler"),
            &[
                format!("--kubeconfig={kc}"),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
            ],
            &[],
        )?;
        let kwok_config = self.write_kwok_config(name, kubelet_port)?;
        self.spawn(
            &format!("kwok-{name}"),
            &bin("kwok"),
            &[
                format!("--kubeconfig={kc}"),
                format!("--config={}", kwok_config.display()),
            ],
            &[],
        )?;
        crate::logs::spawn_watcher(self.config(name).await?, self.dir(), name)?;
        self.spawn_tekton_controller(name, &kc)?;
        let mut webhook_env = tekton_env(tekton_ports("webhook")?);
        webhook_env.extend([
            ("WEBHOOK_PORT".into(), webhook_port.to_string()),
            (
                "WEBHOOK_SERVICE_NAME".into(),
                "tekton-pipelines-webhook".into(),
            ),
            ("WEBHOOK_SECRET_NAME".into(), "webhook-certs".into()),
            (
                "WEBHOOK_ADMISSION_CONTROLLER_NAME".into(),
                "webhook.pipeline.tekton.dev".into(),
            ),
        ]);
        self.spawn(
            &format!("tekton-webhook-{name}"),
            &bin("tekton-webhook"),
            &[format!("-kubeconfig={kc}"), "-disable-ha".into()],
            &as_refs(&webhook_env),
        )?;
        self.wait_member_ready(&client, name, kubelet_port).await
    }

    /// Tekton's controller for cluster `name` (its kubeconfig `kc`).
    fn spawn_tekton_controller(&self, name: &str, kc: &str) -> Result<u32, TestBedError> {
        // Image flags are required and name images no one pulls here.
        let image = |flag: &str| [format!("-{flag}"), format!("tekfed.test/{flag}:none")];
        let mut args = vec![format!("-kubeconfig={kc}"), "-disable-ha".into()];
        for flag in [
            "entrypoint-image",
            "nop-image",
            "sidecarlogresults-image",
            "workingdirinit-image",
            "shell-image",
            "shell-image-win",
        ] {
            args.extend(image(flag));
        }
        let controller_env = tekton_env(tekton_ports("controller")?);
        self.spawn(
            &format!("tekton-controller-{name}"),
            &self.bin_dir().join("tekton-controller"),
            &args,
            &as_refs(&controller_env),
        )
    }

    /// The real Tekton controller on the hub too (no webhook, no pods
    /// played there): for tests that show it leaves the runs tekfed
    /// manages (`spec.managedBy: tekfed.io/hub`) alone while it runs the
    /// others.
    pub async fn start_hub_tekton_controller(&self) -> Result<u32, TestBedError> {
        let client = self.client(crate::HUB).await?;
        self.install_tekton_config(&client, crate::HUB, None)
            .await?;
        let kubeconfig = self.dir().join(format!("{}.kubeconfig", crate::HUB));
        let text = self.cluster_kubeconfig(crate::HUB)?;
        std::fs::write(&kubeconfig, text).map_err(|source| TestBedError::Io {
            what: format!("writing {}", kubeconfig.display()),
            source,
        })?;
        self.spawn_tekton_controller(crate::HUB, &kubeconfig.to_string_lossy())
    }

    /// Tekton's namespace, ConfigMaps and (with a webhook port) webhook
    /// plumbing on a cluster.
    async fn install_tekton_config(
        &self,
        client: &Client,
        member: &str,
        webhook_port: Option<u16>,
    ) -> Result<(), TestBedError> {
        let config = self.bin_dir().join("tekton-config");
        let kube_error = |what: String| move |source| TestBedError::Kube { what, source };
        let apply = PatchParams::apply(MANAGER).force();
        let namespace: Namespace = read_yaml(&config.join("100-namespace.yaml"))?;
        Api::<Namespace>::all(client.clone())
            .patch(TEKTON_NAMESPACE, &apply, &Patch::Apply(&namespace))
            .await
            .map_err(kube_error(format!(
                "creating namespace {TEKTON_NAMESPACE} on {member}"
            )))?;
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), TEKTON_NAMESPACE);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&config)
            .map_err(|source| TestBedError::Io {
                what: format!("reading {}", config.display()),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("config-"))
            })
            .collect();
        files.sort();
        for file in files {
            let mut cm: ConfigMap = read_yaml(&file)?;
            let name = cm.name_any();
            if name == "feature-flags" {
                // Tekton's own containers (init, results) get a
                // securityContext that Pod Security `restricted` admits, as
                // an operator sets it for the namespaces tekfed labels so.
                cm.data
                    .get_or_insert_with(Default::default)
                    .insert("set-security-context".into(), "true".into());
            }
            config_maps
                .patch(&name, &apply, &Patch::Apply(&cm))
                .await
                .map_err(kube_error(format!("creating ConfigMap {name} on {member}")))?;
        }
        let Some(webhook_port) = webhook_port else {
            return Ok(());
        };

        // The webhook's Service resolves to this machine: the API server
        // routes an ExternalName Service to that name and the port the
        // webhook configuration gives.
        let service = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "tekton-pipelines-webhook", "namespace": TEKTON_NAMESPACE},
            "spec": {"type": "ExternalName", "externalName": "127.0.0.1"},
        });
        apply_value(client, &service, member).await?;
        // Tekton's own webhook objects: the (empty) certificate Secret the
        // webhook fills, and the three webhook configurations, each given
        // the webhook's port.
        let path = config.join("500-webhooks.yaml");
        let text = std::fs::read_to_string(&path).map_err(|source| TestBedError::Io {
            what: format!("reading {}", path.display()),
            source,
        })?;
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(&text).map_err(|e| TestBedError::Yaml {
                path: path.clone(),
                message: e.to_string(),
            })?;
        for mut doc in docs.into_iter().filter(|d| d.is_object()) {
            if let Some(webhooks) = doc.get_mut("webhooks").and_then(Value::as_array_mut) {
                for webhook in webhooks {
                    webhook["clientConfig"]["service"]["port"] = json!(webhook_port);
                }
            }
            apply_value(client, &doc, member).await?;
        }
        Ok(())
    }

    /// kwok's configuration and stages for one member, written to a file;
    /// kwok serves the kubelet API (container logs) on `kubelet_port`.
    fn write_kwok_config(&self, member: &str, kubelet_port: u16) -> Result<PathBuf, TestBedError> {
        let (log_options, cluster_logs) =
            crate::logs::kwok_config(self.dir(), member, kubelet_port);
        let mut text = String::from(
            "apiVersion: config.kwok.x-k8s.io/v1alpha1\n\
             kind: KwokConfiguration\n\
             options:\n\
             \x20 manageAllNodes: false\n\
             \x20 manageNodesWithAnnotationSelector: kwok.x-k8s.io/node=fake\n\
             \x20 podPlayStageParallelism: 8\n\
             \x20 nodePlayStageParallelism: 2\n\
             \x20 nodeLeaseParallelism: 2\n\
             \x20 podsOnNodeSyncParallelism: 2\n",
        );
        text.push_str(&log_options);
        text.push_str("---\n");
        text.push_str(&cluster_logs);
        let stages = self.bin_dir().join("kwok-stages");
        for stage in [
            "node-initialize",
            "node-heartbeat",
            "pod-ready",
            "pod-delete",
        ] {
            let path = stages.join(format!("{stage}.yaml"));
            let stage = std::fs::read_to_string(&path).map_err(|source| TestBedError::Io {
                what: format!("reading {}", path.display()),
                source,
            })?;
            text.push_str("---\n");
            text.push_str(&stage);
        }
        text.push_str("---\n");
        text.push_str(TEKTON_POD_STAGES);
        let path = self.dir().join(format!("kwok-{member}.yaml"));
        std::fs::write(&path, text).map_err(|source| TestBedError::Io {
            what: format!("writing {}", path.display()),
            source,
        })?;
        Ok(path)
    }

    async fn wait_member_ready(
        &self,
        client: &Client,
        member: &str,
        kubelet_port: u16,
    ) -> Result<(), TestBedError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let tasks: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), "default", &tekton("Task", "tasks"));
        let dry_run = PostParams {
            dry_run: true,
            ..Default::default()
        };
        // Defaulting: the v1 schema requires a step's name; the webhook
        // supplies it, so this is accepted only once the webhook works.
        let nameless: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "tekton.dev/v1", "kind": "Task",
            "metadata": {"name": "webhook-probe", "namespace": "default"},
            "spec": {"steps": [{"image": "busybox", "script": "true"}]},
        }))
        .expect("a valid Task");
        // Validation: the webhook refuses a Task with no steps.
        let stepless: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "tekton.dev/v1", "kind": "Task",
            "metadata": {"name": "webhook-probe", "namespace": "default"},
            "spec": {"description": "no steps"},
        }))
        .expect("a valid Task");
        let nodes: Api<Node> = Api::all(client.clone());
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        loop {
            let defaulting = tasks.create(&dry_run, &nameless).await;
            let validation = tasks.create(&dry_run, &stepless).await;
            let node_ready = nodes.get_opt(NODE).await.ok().flatten().is_some_and(|n| {
                n.status
                    .and_then(|s| s.conditions)
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            });
            let account = accounts.get_opt("default").await.ok().flatten().is_some();
            // kwok's kubelet API (container logs) is up.
            let kubelet = std::net::TcpStream::connect(("127.0.0.1", kubelet_port)).is_ok();
            let refused_by_webhook = matches!(&validation,
                Err(kube::Error::Api(s)) if s.message.contains("validation.webhook.pipeline.tekton.dev"));
            if defaulting.is_ok() && refused_by_webhook && node_ready && account && kubelet {
                return Ok(());
            }
            let last = format!(
                "defaulting probe: {}; validation probe: {}; node Ready: {node_ready}; default ServiceAccount: {account}; kwok serving on {kubelet_port}: {kubelet}",
                match &defaulting {
                    Ok(_) => "accepted".to_owned(),
                    Err(e) => e.to_string(),
                },
                match &validation {
                    Ok(_) => "accepted (no webhook yet)".to_owned(),
                    Err(e) => e.to_string(),
                },
            );
            if Instant::now() > deadline {
                return Err(TestBedError::Timeout {
                    what: format!(
                        "Tekton, kwok and the scheduler on {member} ({last}); logs in {}",
                        self.dir().display()
                    ),
                });
            }
            self.check_alive()?;
            tokio::time::sleep(POLL_INTERVAL * 2).await;
        }
    }
}

/// The fake Node kwok plays, without taints (no node lifecycle controller
/// runs to lift the not-ready taint, so the API server is started without
/// the `TaintNodesByCondition` admission plugin).
async fn create_node(client: &Client, member: &str) -> Result<(), TestBedError> {
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": NODE,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "type": "kwok",
            },
        },
    }))
    .expect("a valid Node");
    Api::<Node>::all(client.clone())
        .patch(
            NODE,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&node),
        )
        .await
        .map_err(|source| TestBedError::Kube {
            what: format!("creating Node {NODE} on {member}"),
            source,
        })?;
    Ok(())
}

/// The `ApiResource` of a `tekton.dev/v1` kind.
fn tekton(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "tekton.dev".into(),
        version: "v1".into(),
        api_version: "tekton.dev/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// Server-side apply one object given as JSON (core or
/// admissionregistration kinds).
async fn apply_value(client: &Client, object: &Value, member: &str) -> Result<(), TestBedError> {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let plural = format!("{}s", kind.to_lowercase());
    let resource = ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.into(),
        kind: kind.into(),
        plural,
    };
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let api: Api<DynamicObject> = match object["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(|source| TestBedError::Kube {
        what: format!("applying {kind} {name} on {member}"),
        source,
    })?;
    Ok(())
}

/// Ports of a knative server of its own: every one needs them; the health
/// server sharedmain starts on :8080 cannot be moved, and a second one only
/// logs "address already in use" (the process goes on).
fn tekton_ports(prefix: &str) -> Result<Vec<(String, String)>, TestBedError> {
    Ok(vec![
        ("PROBES_PORT".into(), free_port()?.to_string()),
        ("PROFILING_PORT".into(), free_port()?.to_string()),
        ("METRICS_PROMETHEUS_PORT".into(), free_port()?.to_string()),
        (
            "CONFIG_LEADERELECTION_NAME".into(),
            format!("config-leader-election-{prefix}"),
        ),
    ])
}

/// The environment of Tekton's controller and webhook, with `own` added.
fn tekton_env(own: Vec<(String, String)>) -> Vec<(String, String)> {
    [
        ("SYSTEM_NAMESPACE", TEKTON_NAMESPACE),
        ("METRICS_DOMAIN", "tekton.dev/pipeline"),
        ("KUBERNETES_MIN_VERSION", "v1.28.0"),
        ("CONFIG_DEFAULTS_NAME", "config-defaults"),
        ("CONFIG_LOGGING_NAME", "config-logging"),
        ("CONFIG_OBSERVABILITY_NAME", "config-observability"),
        ("CONFIG_FEATURE_FLAGS_NAME", "feature-flags"),
        ("CONFIG_SPIRE", "config-spire"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain(own)
    .collect()
}

fn as_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}
