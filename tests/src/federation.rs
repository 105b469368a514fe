//! A running federation on a test bed: the member kubeconfig Secrets and
//! `MemberCluster`s on the hub, and the real `tekfed-hub` binary running
//! against it as its own process.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::runtime::reflector::Lookup;
use serde_json::json;
use tekfed_crds::MemberCluster;

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
            "spec": {"secretRef": {"name": secret_name}},
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

/// The shared test bed with both members registered (labels
/// `tekfed.io/test-member=<name>`) and one hub running: for propagation
/// tests that share a federation, each in namespaces of its own.
pub fn shared_federation() -> &'static TestBed {
    use std::sync::OnceLock;
    static STARTED: OnceLock<Result<(), String>> = OnceLock::new();
    let bed = crate::shared();
    let started = STARTED.get_or_init(|| {
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                for member in ["member-1".to_owned(), "member-2".to_owned()] {
                    let labels =
                        BTreeMap::from([("tekfed.io/test-member".to_owned(), member.clone())]);
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
        })
        .join()
        .unwrap_or_else(|_| Err("starting the federation panicked".into()))
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
    let api: Api<MemberCluster> = Api::all(bed.client(HUB).await.map_err(|e| e.to_string())?);
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let list = api
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let reachable = |name: &String| {
            list.items.iter().any(|mc| {
                mc.name().as_deref() == Some(name.as_str())
                    && mc.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Reachable" && c.status == "True")
                    })
            })
        };
        if clusters.iter().all(reachable) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "members {clusters:?} not reachable after {timeout:?}; hub log: {}",
                bed.log_of("tekfed-hub")
            ));
        }
        tokio::time::sleep(crate::POLL_INTERVAL).await;
    }
}
