//! Everything a run needs travels with it: the Tasks, Pipeline and
//! StepActions it refers to, the ServiceAccounts it runs as and their
//! Secrets, and the ConfigMaps and Secrets of its workspaces.
//!
//! - [`closure`] (pure): what a run needs, from its template and what the
//!   hub holds; what is missing; which Secrets may not leave the hub.
//! - [`Dependencies`]: the hub's view for it, from watches: the federated
//!   templates, ServiceAccounts, and the *metadata* of ConfigMaps, Secrets
//!   and namespaces (a Secret's data is read only when it is carried).
//! - [`carry`]: one member's copies: applied unless the member already has
//!   what the hub holds, removed when no run there needs them. An object
//!   tekfed did not create is a conflict, left alone.
//! - [`sweep`]: keeps carried copies in sync while an unfinished run on
//!   that cluster needs them, and removes them once none does.
//!
//! When each step happens: the dispatcher computes a queued run's closure
//! before scheduling it (a run that needs what is not there, or a Secret
//! without consent, stays `Queued` with `DependenciesReady=False` and holds
//! no capacity); the run controller carries the closure to the run's
//! cluster just before it creates the member run; the sweep does the rest.
//! Carrying and removing on one cluster and namespace never overlap (one
//! lock each), so the sweep never removes what a run was just given.

use std::collections::BTreeMap;
use std::sync::Arc;

use dashmap::DashMap;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Map, Value};
use tekfed_api::dependencies::{LABEL_CARRY, LABEL_CARRY_SECRETS};
use tekfed_api::{FederatedPipeline, FederatedStepAction, FederatedTask, MemberCluster, RunKind};
use tokio::sync::Mutex;

use crate::errors::watch_failure;

pub mod carry;
pub mod closure;
pub mod sweep;

pub use closure::{Closure, Dep, DepKind};

/// What a cluster and namespace hold, carried by tekfed: `(cluster, namespace)`.
pub type Place = (String, String);

/// The hub's view of what runs may need, and what it carried where.
pub struct Dependencies {
    hub: Client,
    /// The members, for the ServiceAccounts they list as their own.
    clusters: Store<MemberCluster>,
    tasks: Store<FederatedTask>,
    pipelines: Store<FederatedPipeline>,
    step_actions: Store<FederatedStepAction>,
    service_accounts: Store<ServiceAccount>,
    config_maps: Store<PartialObjectMeta<ConfigMap>>,
    secrets: Store<PartialObjectMeta<Secret>>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    writers: std::sync::Mutex<Option<Writers>>,
    /// Plain objects carried and found in sync, by place and dependency:
    /// the hub object's resourceVersion last applied. A hit costs no
    /// request; a miss (after a restart) one read of the member's copy.
    pub(crate) carried: DashMap<(Place, Dep), String>,
    /// One lock per place: carrying for a run and the sweep's removals
    /// never interleave. The number counts carries, so the sweep can tell
    /// that one happened since it looked at the runs.
    pub(crate) locks: DashMap<Place, Arc<Mutex<u64>>>,
    /// Wakes the sweep: a run finished, moved or went.
    pub sweep: tokio::sync::Notify,
}

struct Writers {
    tasks: reflector::store::Writer<FederatedTask>,
    pipelines: reflector::store::Writer<FederatedPipeline>,
    step_actions: reflector::store::Writer<FederatedStepAction>,
    service_accounts: reflector::store::Writer<ServiceAccount>,
    config_maps: reflector::store::Writer<PartialObjectMeta<ConfigMap>>,
    secrets: reflector::store::Writer<PartialObjectMeta<Secret>>,
    namespaces: reflector::store::Writer<PartialObjectMeta<Namespace>>,
}

impl Dependencies {
    pub fn new(hub: Client, clusters: Store<MemberCluster>) -> Self {
        let (tasks, tasks_w) = reflector::store();
        let (pipelines, pipelines_w) = reflector::store();
        let (step_actions, step_actions_w) = reflector::store();
        let (service_accounts, service_accounts_w) = reflector::store();
        let (config_maps, config_maps_w) = reflector::store();
        let (secrets, secrets_w) = reflector::store();
        let (namespaces, namespaces_w) = reflector::store();
        Self {
            hub,
            clusters,
            tasks,
            pipelines,
            step_actions,
            service_accounts,
            config_maps,
            secrets,
            namespaces,
            writers: std::sync::Mutex::new(Some(Writers {
                tasks: tasks_w,
                pipelines: pipelines_w,
                step_actions: step_actions_w,
                service_accounts: service_accounts_w,
                config_maps: config_maps_w,
                secrets: secrets_w,
                namespaces: namespaces_w,
            })),
            carried: DashMap::new(),
            locks: DashMap::new(),
            sweep: tokio::sync::Notify::new(),
        }
    }

    /// Feed the stores until the hub stops (once).
    pub async fn watch(&self) {
        let Some(w) = self
            .writers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        let hub = &self.hub;
        tokio::join!(
            reflect(Api::all(hub.clone()), w.tasks),
            reflect(Api::all(hub.clone()), w.pipelines),
            reflect(Api::all(hub.clone()), w.step_actions),
            reflect(Api::all(hub.clone()), w.service_accounts),
            // ConfigMaps, Secrets, namespaces: metadata only (a
            // `PartialObjectMeta` watch); data is read only to carry it.
            reflect(Api::all(hub.clone()), w.config_maps),
            reflect(Api::all(hub.clone()), w.secrets),
            reflect(Api::all(hub.clone()), w.namespaces),
        );
    }

    /// Until every store has listed once: before that, "not there" means
    /// "not seen yet".
    pub async fn wait_until_ready(&self) {
        let _ = self.tasks.wait_until_ready().await;
        let _ = self.pipelines.wait_until_ready().await;
        let _ = self.step_actions.wait_until_ready().await;
        let _ = self.service_accounts.wait_until_ready().await;
        let _ = self.config_maps.wait_until_ready().await;
        let _ = self.secrets.wait_until_ready().await;
        let _ = self.namespaces.wait_until_ready().await;
    }

    /// The closure of a run of `kind` in `namespace` with template `spec`.
    pub fn closure(&self, kind: RunKind, namespace: &str, spec: &Map<String, Value>) -> Closure {
        let view = NamespaceView {
            deps: self,
            namespace,
            secrets_allowed: self
                .namespaces
                .get(&ObjectRef::new(namespace))
                .is_some_and(|ns| carry_label(ns.labels(), LABEL_CARRY_SECRETS)),
        };
        closure::closure(kind, spec, &view)
    }

    /// A plain hub object's (ServiceAccount, ConfigMap, Secret)
    /// resourceVersion: what a carried copy is compared with. `None` when
    /// it is gone, or for a Tekton kind (compared by content instead).
    pub(crate) fn source_version(&self, namespace: &str, dep: &Dep) -> Option<String> {
        fn key<K: Resource<DynamicType = ()>>(name: &str, namespace: &str) -> ObjectRef<K> {
            ObjectRef::new(name).within(namespace)
        }
        let name = dep.name.as_str();
        match dep.kind {
            DepKind::Secret => self.secrets.get(&key(name, namespace))?.resource_version(),
            DepKind::ConfigMap => self
                .config_maps
                .get(&key(name, namespace))?
                .resource_version(),
            DepKind::ServiceAccount => self
                .service_accounts
                .get(&key(name, namespace))?
                .resource_version(),
            DepKind::StepAction | DepKind::Task | DepKind::Pipeline => None,
        }
    }

    pub(crate) fn task(&self, namespace: &str, name: &str) -> Option<Arc<FederatedTask>> {
        self.tasks.get(&ObjectRef::new(name).within(namespace))
    }

    pub(crate) fn pipeline(&self, namespace: &str, name: &str) -> Option<Arc<FederatedPipeline>> {
        self.pipelines.get(&ObjectRef::new(name).within(namespace))
    }

    pub(crate) fn step_action(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<FederatedStepAction>> {
        self.step_actions
            .get(&ObjectRef::new(name).within(namespace))
    }

    /// The lock of one place.
    pub(crate) fn lock(&self, place: &Place) -> Arc<Mutex<u64>> {
        self.locks.entry(place.clone()).or_default().clone()
    }

    pub(crate) fn hub(&self) -> &Client {
        &self.hub
    }
}

/// The closure's view of one hub namespace.
struct NamespaceView<'a> {
    deps: &'a Dependencies,
    namespace: &'a str,
    secrets_allowed: bool,
}

impl NamespaceView<'_> {
    fn key<K: Resource<DynamicType = ()>>(&self, name: &str) -> ObjectRef<K> {
        ObjectRef::new(name).within(self.namespace)
    }
}

impl closure::Lookup for NamespaceView<'_> {
    fn task(&self, name: &str) -> Option<Map<String, Value>> {
        let t = self.deps.tasks.get(&self.key(name))?;
        Some(t.spec.template.spec.clone())
    }

    fn pipeline(&self, name: &str) -> Option<Map<String, Value>> {
        let p = self.deps.pipelines.get(&self.key(name))?;
        Some(p.spec.template.spec.clone())
    }

    fn step_action(&self, name: &str) -> bool {
        self.deps.step_actions.get(&self.key(name)).is_some()
    }

    fn member_owned(&self, name: &str) -> bool {
        self.deps.clusters.state().iter().any(|mc| {
            tekfed_api::guard::allows_service_account(&mc.spec.tenancy, self.namespace, name)
        })
    }

    fn service_account(&self, name: &str) -> Option<Vec<String>> {
        let sa = self.deps.service_accounts.get(&self.key(name))?;
        let mut names: Vec<String> = sa
            .secrets
            .iter()
            .flatten()
            .filter_map(|s| s.name.clone())
            .collect();
        names.extend(
            sa.image_pull_secrets
                .iter()
                .flatten()
                .map(|s| s.name.clone()),
        );
        names.retain(|n| !n.is_empty());
        Some(names)
    }

    fn config_map(&self, name: &str) -> bool {
        self.deps
            .config_maps
            .get(&ObjectRef::new_with(name, ()).within(self.namespace))
            .is_some()
    }

    fn secret(&self, name: &str) -> Option<bool> {
        let secret = self
            .deps
            .secrets
            .get(&ObjectRef::new_with(name, ()).within(self.namespace))?;
        Some(self.secrets_allowed || carry_label(secret.labels(), LABEL_CARRY))
    }
}

fn carry_label(labels: &BTreeMap<String, String>, key: &str) -> bool {
    labels.get(key).is_some_and(|v| v == "true")
}

/// Feed one store from its watch until the hub stops, without the
/// fields tekfed never reads (`managedFields`; kubectl's last applied
/// configuration, which holds a Secret's data in clear).
async fn reflect<K>(api: Api<K>, writer: reflector::store::Writer<K>)
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
    K: Send + Sync + 'static,
{
    let kind = K::kind(&()).into_owned();
    watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|o| {
            let meta = o.meta_mut();
            meta.managed_fields = None;
            if let Some(a) = meta.annotations.as_mut() {
                a.remove("kubectl.kubernetes.io/last-applied-configuration");
            }
        })
        .reflect(writer)
        .for_each(|e| {
            if let Err(e) = e {
                tracing::warn!(%kind, error = %watch_failure(&e), "hub watch failed; retrying");
            }
            std::future::ready(())
        })
        .await;
}
