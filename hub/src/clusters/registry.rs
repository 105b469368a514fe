//! The registry of member clusters as the hub reaches them: one
//! `kube::Client` per member, built from the kubeconfig Secret its
//! `MemberCluster` references, rebuilt when that Secret changes and dropped
//! when the `MemberCluster` goes.
//!
//! For each reachable member the registry also runs watches on the Tekton
//! objects tekfed owns there (label `app.kubernetes.io/managed-by=tekfed`),
//! kept in reflector stores. Their events are how drift reaches the
//! propagation controllers at once: an edit or a delete on a member
//! re-queues the federated object it belongs to.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dashmap::{DashMap, DashSet};
use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Config};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tekfed_runtime::connect::tekton_resource;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use super::Unreachable;
use crate::errors::watch_failure;
use crate::metrics::OutcomeLabel;
use crate::ownership::{LABEL_KIND, LABEL_MANAGED_BY, LABEL_NAME, LABEL_NAMESPACE, MANAGED_BY};

/// The Tekton kinds the hub keeps on members, each with the federated kind
/// that owns it.
pub const TEKTON_KINDS: [(&str, &str); 3] = [
    ("Task", "FederatedTask"),
    ("Pipeline", "FederatedPipeline"),
    ("StepAction", "FederatedStepAction"),
];

/// A federated object to reconcile again: `(namespace, name)`.
pub type Requeue = (String, String);

/// A member the hub can talk to.
pub struct Connection {
    pub client: Client,
    /// The member's API server URL, as its kubeconfig gives it.
    pub server: String,
    /// The Secret's resourceVersion the client was built from.
    pub fingerprint: String,
    /// Tekton objects tekfed owns on the member, by Tekton kind.
    pub stores: BTreeMap<&'static str, Store<DynamicObject>>,
    /// Namespaces known to exist on the member.
    pub namespaces: DashSet<String>,
    watches: Vec<AbortHandle>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        for w in &self.watches {
            w.abort();
        }
    }
}

/// One member's entry: a connection, or why there is none.
#[derive(Clone)]
pub enum MemberState {
    Connected(Arc<Connection>),
    Unreachable(Unreachable),
}

/// Every member the hub knows, and the channels that tell the propagation
/// controllers something changed.
pub struct Members {
    members: DashMap<String, MemberState>,
    /// Bumped whenever a member appears, goes, or changes reachability,
    /// labels or taints: every federated object is reconciled again.
    changed: watch::Sender<u64>,
    /// Drift events, by federated kind.
    requeue: BTreeMap<&'static str, mpsc::UnboundedSender<Requeue>>,
    /// What placement last saw of each member (labels and taints).
    placement_inputs: DashMap<String, String>,
    /// Woken when room for runs may have appeared or gone.
    pub schedule: Arc<tokio::sync::Notify>,
    /// Runs the hub has assigned to each cluster that have not finished.
    active: DashMap<String, i64>,
    /// Each member's API server and when its MemberCluster was created
    /// (milliseconds, name): who keeps a server joined under two names.
    servers: DashMap<String, (String, (i64, String))>,
    /// Template copies checked, by outcome (`tekfed_template_syncs_total`).
    pub syncs: Family<OutcomeLabel, Counter>,
}

impl Members {
    /// A registry, with one receiver of drift events per federated kind.
    pub fn new(
        syncs: Family<OutcomeLabel, Counter>,
    ) -> (
        Self,
        BTreeMap<&'static str, mpsc::UnboundedReceiver<Requeue>>,
    ) {
        let mut senders = BTreeMap::new();
        let mut receivers = BTreeMap::new();
        for (_, federated) in TEKTON_KINDS {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.insert(federated, tx);
            receivers.insert(federated, rx);
        }
        let members = Self {
            members: DashMap::new(),
            changed: watch::channel(0).0,
            requeue: senders,
            placement_inputs: DashMap::new(),
            schedule: Arc::new(tokio::sync::Notify::new()),
            active: DashMap::new(),
            servers: DashMap::new(),
            syncs,
        };
        (members, receivers)
    }

    /// Notified whenever membership or a member's state changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Tell the propagation controllers to look at every object again.
    pub fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn get(&self, name: &str) -> Option<MemberState> {
        self.members.get(name).map(|m| m.clone())
    }

    /// The connection to `name`, if there is one.
    pub fn connection(&self, name: &str) -> Result<Arc<Connection>, Unreachable> {
        match self.get(name) {
            Some(MemberState::Connected(c)) => Ok(c),
            Some(MemberState::Unreachable(u)) => Err(u),
            None => Err(Unreachable {
                reason: "NotConnected",
                message: format!("the hub has no connection to cluster {name} yet"),
            }),
        }
    }

    /// Record a working client for `name`. A client built from the same
    /// Secret version is kept as it is (its watches keep running). A second
    /// name for an API server another member already uses is refused: each
    /// name would take the other's copies for leftovers and remove them.
    pub fn connected(
        &self,
        name: &str,
        client: Client,
        server: &str,
        fingerprint: &str,
        joined: (i64, String),
    ) -> Result<(), Unreachable> {
        // The first name to join a server keeps it (oldest MemberCluster,
        // then smaller name), whichever happens to be reachable right now.
        self.servers
            .insert(name.to_owned(), (server.to_owned(), joined.clone()));
        let first = self
            .servers
            .iter()
            .filter(|e| e.value().0 == server)
            .min_by(|a, b| a.value().1.cmp(&b.value().1))
            .map(|e| e.key().clone());
        if let Some(other) = first.filter(|first| first != name) {
            let why = Unreachable {
                reason: "DuplicateCluster",
                message: format!(
                    "{server} is already joined as member cluster {other}; unjoin one of the two names"
                ),
            };
            self.unreachable(name, why.clone());
            return Err(why);
        }
        // This name keeps the server: any other name for it stops now, not
        // at its next probe.
        let others: Vec<String> = self
            .servers
            .iter()
            .filter(|e| e.key() != name && e.value().0 == server)
            .map(|e| e.key().clone())
            .collect();
        for other in others {
            self.unreachable(
                &other,
                Unreachable {
                    reason: "DuplicateCluster",
                    message: format!("{server} is already joined as member cluster {name}; unjoin one of the two names"),
                },
            );
        }
        if let Some(MemberState::Connected(c)) = self.get(name)
            && c.fingerprint == fingerprint
        {
            return Ok(());
        }
        let connection = self.connect(name, client, server, fingerprint);
        self.members.insert(
            name.to_owned(),
            MemberState::Connected(Arc::new(connection)),
        );
        self.notify();
        Ok(())
    }

    /// Record that `name` cannot be used, dropping any connection.
    pub fn unreachable(&self, name: &str, why: Unreachable) {
        if let Some(MemberState::Unreachable(u)) = self.get(name)
            && u == why
        {
            return;
        }
        self.members
            .insert(name.to_owned(), MemberState::Unreachable(why));
        self.notify();
    }

    /// Unfinished runs the hub has assigned to `cluster`.
    pub fn active_runs(&self, cluster: &str) -> i64 {
        self.active.get(cluster).map(|n| *n).unwrap_or(0)
    }

    /// Record the scheduler's count of unfinished runs per cluster.
    pub fn set_active_runs(&self, counts: &BTreeMap<String, i64>) {
        self.active.retain(|k, _| counts.contains_key(k));
        for (k, v) in counts {
            self.active.insert(k.clone(), *v);
        }
    }

    /// Forget a member whose `MemberCluster` is gone.
    pub fn remove(&self, name: &str) {
        self.placement_inputs.remove(name);
        self.servers.remove(name);
        if self.members.remove(name).is_some() {
            self.notify();
        }
    }

    /// Notify when a member's labels or taints differ from what was seen
    /// last: placements select on them.
    pub fn notify_if_changed(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        taints: &[tekfed_api::Taint],
    ) {
        let seen = serde_json::to_string(&(labels, taints)).unwrap_or_default();
        let previous = self.placement_inputs.insert(name.to_owned(), seen.clone());
        if previous.as_ref() != Some(&seen) {
            self.notify();
        }
    }

    fn connect(&self, name: &str, client: Client, server: &str, fingerprint: &str) -> Connection {
        let mut stores = BTreeMap::new();
        let mut watches = Vec::new();
        for (tekton, _) in TEKTON_KINDS {
            let resource = tekton_resource(tekton);
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
            let writer = reflector::store::Writer::<DynamicObject>::new(resource.clone());
            let reader = writer.as_reader();
            let config =
                watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
            let requeue = self.requeue.clone();
            let cluster = name.to_owned();
            let stream = watcher(api, config)
                .default_backoff()
                .reflect(writer)
                .touched_objects();
            let task = tokio::spawn(async move {
                let mut stream = std::pin::pin!(stream);
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(object) => route(&requeue, &object),
                        // Retried with the watcher's backoff; the member's
                        // watches stop when it is found unreachable.
                        Err(e) => {
                            tracing::warn!(%cluster, kind = tekton, error = %watch_failure(&e), "member watch failed; retrying")
                        }
                    }
                }
            });
            watches.push(task.abort_handle());
            stores.insert(tekton, reader);
        }
        Connection {
            client,
            server: server.to_owned(),
            fingerprint: fingerprint.to_owned(),
            stores,
            namespaces: DashSet::new(),
            watches,
        }
    }
}

/// Send a member object's owner to its propagation controller.
fn route(requeue: &BTreeMap<&'static str, mpsc::UnboundedSender<Requeue>>, object: &DynamicObject) {
    let labels = object.metadata.labels.clone().unwrap_or_default();
    let (Some(kind), Some(ns), Some(name)) = (
        labels.get(LABEL_KIND),
        labels.get(LABEL_NAMESPACE),
        labels.get(LABEL_NAME),
    ) else {
        return;
    };
    if let Some(tx) = requeue.get(kind.as_str()) {
        let _ = tx.send((ns.clone(), name.clone()));
    }
}

/// Build a client from a member kubeconfig, refusing what the hub must not
/// run or trust: exec and auth-provider plugins (code from a Secret would
/// run on the hub), file references (they point into the hub's own disk),
/// and `insecure-skip-tls-verify`.
pub async fn client_from_kubeconfig(
    text: &str,
    connect_timeout: Duration,
) -> Result<(Client, String), Unreachable> {
    let invalid = |message: String| Unreachable {
        reason: "KubeconfigInvalid",
        message,
    };
    let kubeconfig = Kubeconfig::from_yaml(text)
        .map_err(|e| invalid(format!("the kubeconfig does not parse: {e}")))?;
    for user in &kubeconfig.auth_infos {
        let Some(auth) = &user.auth_info else {
            continue;
        };
        if auth.exec.is_some() || auth.auth_provider.is_some() {
            return Err(invalid(format!(
                "user {} uses an exec or auth-provider plugin, which the hub never runs; use a ServiceAccount token (kubectl tekfed join does)",
                user.name
            )));
        }
        if auth.token_file.is_some()
            || auth.client_certificate.is_some()
            || auth.client_key.is_some()
        {
            return Err(invalid(format!(
                "user {} refers to files; inline the credentials (token, client-certificate-data, client-key-data)",
                user.name
            )));
        }
    }
    for cluster in &kubeconfig.clusters {
        let Some(c) = &cluster.cluster else { continue };
        if c.insecure_skip_tls_verify == Some(true) {
            return Err(Unreachable {
                reason: "KubeconfigInsecure",
                message: format!(
                    "cluster {} sets insecure-skip-tls-verify; give its CA in certificate-authority-data instead",
                    cluster.name
                ),
            });
        }
        if c.certificate_authority.is_some() {
            return Err(invalid(format!(
                "cluster {} refers to a CA file; inline it as certificate-authority-data",
                cluster.name
            )));
        }
    }
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| invalid(format!("the kubeconfig is not usable: {e}")))?;
    config.connect_timeout = Some(connect_timeout);
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|e| {
        invalid(format!(
            "cannot build a client from the kubeconfig: {}",
            crate::errors::one_line(&e)
        ))
    })?;
    Ok((client, server))
}
