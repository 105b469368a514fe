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
use tekfed_api::guard::Tenancy;
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
    /// The fingerprint of each copy's `spec` as the member held it after
    /// tekfed's last write, by (Tekton kind, namespace, name): how a change
    /// made on the member is told apart ([`crate::templates::drift`]).
    pub written: DashMap<(&'static str, String, String), String>,
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
    /// What each member lets the hub do there (`spec.tenancy`).
    tenancies: DashMap<String, Tenancy>,
    /// Woken when room for runs may have appeared or gone.
    pub schedule: Arc<tokio::sync::Notify>,
    /// Runs the hub has assigned to each cluster that have not finished.
    active: DashMap<String, i64>,
    /// Whether the dispatcher has counted them once.
    counted: std::sync::atomic::AtomicBool,
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
            tenancies: DashMap::new(),
            schedule: Arc::new(tokio::sync::Notify::new()),
            active: DashMap::new(),
            counted: Default::default(),
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

    /// What member `name` lets the hub do there; a member not seen yet
    /// gets the defaults (`restricted`, no namespace list).
    pub fn tenancy(&self, name: &str) -> Tenancy {
        self.tenancies
            .get(name)
            .map(|t| t.clone())
            .unwrap_or_default()
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

    /// The scheduler's count of unfinished runs on `cluster`, once it has
    /// counted at all (`None` before its first round: a hub that just
    /// started knows of no run yet, which is not knowing there are none).
    pub fn counted_active_runs(&self, cluster: &str) -> Option<i64> {
        self.counted
            .load(std::sync::atomic::Ordering::Acquire)
            .then(|| self.active_runs(cluster))
    }

    /// Record the scheduler's count of unfinished runs per cluster.
    pub fn set_active_runs(&self, counts: &BTreeMap<String, i64>) {
        self.active.retain(|k, _| counts.contains_key(k));
        for (k, v) in counts {
            self.active.insert(k.clone(), *v);
        }
        self.counted
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Forget a member whose `MemberCluster` is gone.
    pub fn remove(&self, name: &str) {
        self.placement_inputs.remove(name);
        self.tenancies.remove(name);
        self.servers.remove(name);
        if self.members.remove(name).is_some() {
            self.notify();
        }
    }

    /// Notify when a member's labels, taints or tenancy differ from what
    /// was seen last: placements select on them, and what a member allows
    /// decides what may go there.
    pub fn notify_if_changed(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        taints: &[tekfed_api::Taint],
        tenancy: &Tenancy,
    ) {
        self.tenancies.insert(name.to_owned(), tenancy.clone());
        let seen = serde_json::to_string(&(labels, taints, tenancy)).unwrap_or_default();
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
            written: DashMap::new(),
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
/// run, trust or let a Secret choose ([`check_kubeconfig`]).
pub async fn client_from_kubeconfig(
    text: &str,
    connect_timeout: Duration,
) -> Result<(Client, String), Unreachable> {
    let invalid = |message: String| Unreachable {
        reason: "KubeconfigInvalid",
        message,
    };
    let kubeconfig = Kubeconfig::from_yaml(text).map_err(|_| {
        // The parser's message may quote the text, credentials included.
        invalid("the kubeconfig does not parse as YAML (its text is not shown)".into())
    })?;
    check_kubeconfig(&kubeconfig)?;
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

/// Whether the hub may use a member kubeconfig. Only the current context's
/// cluster and user are checked, because they are all the hub uses: kube
/// loads exactly those ([`KubeConfigOptions::default`]); other entries are
/// never read. Refused, each with what to change:
/// - `KubeconfigInvalid`: no current context (or one naming a cluster the
///   file lacks); an exec or auth-provider plugin (code from a Secret would
///   run on the hub); a file reference (it points into the hub's own disk);
///   impersonation (`as`, `as-uid`, `as-groups`, `as-user-extra`: the hub
///   acts only as the identity its credentials are); `proxy-url` (the
///   hub's requests and credentials would go where the Secret says).
/// - `KubeconfigInsecure`: `insecure-skip-tls-verify`; a server that is
///   not `https://`; no `certificate-authority-data` (the hub trusts a
///   member only through the CA given with it, never the system's roots).
pub fn check_kubeconfig(kubeconfig: &Kubeconfig) -> Result<(), Unreachable> {
    let invalid = |message: String| Unreachable {
        reason: "KubeconfigInvalid",
        message,
    };
    let insecure = |message: String| Unreachable {
        reason: "KubeconfigInsecure",
        message,
    };
    let context_name = kubeconfig.current_context.as_deref().ok_or_else(|| {
        invalid("the kubeconfig has no current-context; set it to the member's context".into())
    })?;
    let context = (kubeconfig.contexts.iter())
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.as_ref())
        .ok_or_else(|| {
            invalid(format!(
                "the kubeconfig's current-context {context_name} is not one of its contexts"
            ))
        })?;
    let cluster_name = &context.cluster;
    let cluster = (kubeconfig.clusters.iter())
        .find(|c| &c.name == cluster_name)
        .and_then(|c| c.cluster.as_ref())
        .ok_or_else(|| {
            invalid(format!(
                "context {context_name} names cluster {cluster_name}, which the kubeconfig does not define"
            ))
        })?;
    // As kube does, a context without a user, or naming none defined, has
    // no credentials (and nothing to refuse).
    let user = (context.user.as_ref())
        .and_then(|name| kubeconfig.auth_infos.iter().find(|u| &u.name == name))
        .and_then(|u| Some((u.name.as_str(), u.auth_info.as_ref()?)));
    if let Some((name, auth)) = user {
        if auth.exec.is_some() || auth.auth_provider.is_some() {
            return Err(invalid(format!(
                "user {name} uses an exec or auth-provider plugin, which the hub never runs; use a ServiceAccount token (kubectl tekfed join does)"
            )));
        }
        if auth.token_file.is_some()
            || auth.client_certificate.is_some()
            || auth.client_key.is_some()
        {
            return Err(invalid(format!(
                "user {name} refers to files; inline the credentials (token, client-certificate-data, client-key-data)"
            )));
        }
        if auth.impersonate.is_some()
            || auth.impersonate_uid.is_some()
            || auth.impersonate_groups.is_some()
            || auth.impersonate_user_extra.is_some()
        {
            return Err(invalid(format!(
                "user {name} impersonates another identity (as, as-uid, as-groups or as-user-extra), which the hub never does on a member; give the kubeconfig's own identity the rights it needs (kubectl tekfed join does)"
            )));
        }
    }
    if cluster.insecure_skip_tls_verify == Some(true) {
        return Err(insecure(format!(
            "cluster {cluster_name} sets insecure-skip-tls-verify; give its CA in certificate-authority-data instead"
        )));
    }
    if cluster.certificate_authority.is_some() {
        return Err(invalid(format!(
            "cluster {cluster_name} refers to a CA file; inline it as certificate-authority-data"
        )));
    }
    let server = cluster.server.as_deref().unwrap_or_default();
    if !server
        .get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
    {
        return Err(insecure(format!(
            "cluster {cluster_name} has server {:?}, which is not https://; the hub reaches members over TLS only",
            crate::errors::sanitize(server)
        )));
    }
    if cluster
        .certificate_authority_data
        .as_deref()
        .is_none_or(|ca| ca.trim().is_empty())
    {
        return Err(insecure(format!(
            "cluster {cluster_name} has no certificate-authority-data; the hub trusts a member's API server only through the CA given with it, never the system's roots: inline the member's CA (kubectl tekfed join does)"
        )));
    }
    if cluster.proxy_url.is_some() {
        return Err(invalid(format!(
            "cluster {cluster_name} sets proxy-url; the hub connects to members directly, never through a proxy a Secret names (the proxy would carry the hub's credentials): remove it"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kubeconfig as `kubectl tekfed join` writes it, changed by `edit`
    /// (YAML text replacements), parsed.
    fn kubeconfig(edit: &[(&str, &str)]) -> Kubeconfig {
        let mut text = "\
apiVersion: v1
kind: Config
current-context: m
clusters:
- name: m
  cluster:
    server: https://member.example:6443
    certificate-authority-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t
users:
- name: tekfed-hub
  user:
    token: t0ken
contexts:
- name: m
  context: {cluster: m, user: tekfed-hub}
"
        .to_owned();
        for (from, to) in edit {
            assert!(text.contains(from), "{from}");
            text = text.replace(from, to);
        }
        Kubeconfig::from_yaml(&text).unwrap()
    }

    fn refusal(edit: &[(&str, &str)]) -> (&'static str, String) {
        let why = check_kubeconfig(&kubeconfig(edit)).expect_err("refused");
        (why.reason, why.message)
    }

    #[test]
    fn a_kubeconfig_as_join_writes_it_is_accepted() {
        assert_eq!(check_kubeconfig(&kubeconfig(&[])), Ok(()));
        // The scheme is case-insensitive, as in any URL.
        let upper = [("https://member", "HTTPS://member")];
        assert_eq!(check_kubeconfig(&kubeconfig(&upper)), Ok(()));
    }

    #[test]
    fn each_unsafe_setting_is_refused_naming_it() {
        let token = ("    token: t0ken\n", "");
        // (case, text replacements, reason, what the message names)
        type Edit = Vec<(&'static str, &'static str)>;
        let cases: [(&str, Edit, &str, &str); 12] = [
            (
                "http",
                vec![("https://member", "http://member")],
                "KubeconfigInsecure",
                "not https://",
            ),
            (
                "no server",
                vec![("    server: https://member.example:6443\n", "")],
                "KubeconfigInsecure",
                "not https://",
            ),
            (
                "no CA",
                vec![(
                    "    certificate-authority-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t\n",
                    "",
                )],
                "KubeconfigInsecure",
                "no certificate-authority-data",
            ),
            (
                "empty CA",
                vec![("LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t", "\"\"")],
                "KubeconfigInsecure",
                "no certificate-authority-data",
            ),
            (
                "proxy-url",
                vec![(
                    "    server:",
                    "    proxy-url: http://proxy.example:3128\n    server:",
                )],
                "KubeconfigInvalid",
                "proxy-url",
            ),
            (
                "as",
                vec![
                    token,
                    ("  user:\n", "  user:\n    token: t\n    as: system:admin\n"),
                ],
                "KubeconfigInvalid",
                "impersonates",
            ),
            (
                "as-groups",
                vec![
                    token,
                    (
                        "  user:\n",
                        "  user:\n    token: t\n    as-groups: [system:masters]\n",
                    ),
                ],
                "KubeconfigInvalid",
                "impersonates",
            ),
            (
                "as-uid",
                vec![
                    token,
                    ("  user:\n", "  user:\n    token: t\n    as-uid: \"0\"\n"),
                ],
                "KubeconfigInvalid",
                "impersonates",
            ),
            (
                "as-user-extra",
                vec![
                    token,
                    (
                        "  user:\n",
                        "  user:\n    token: t\n    as-user-extra: {scopes: [all]}\n",
                    ),
                ],
                "KubeconfigInvalid",
                "impersonates",
            ),
            (
                "exec",
                vec![
                    token,
                    (
                        "  user:\n",
                        "  user:\n    exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/true}\n",
                    ),
                ],
                "KubeconfigInvalid",
                "exec",
            ),
            (
                "insecure-skip-tls-verify",
                vec![(
                    "    server:",
                    "    insecure-skip-tls-verify: true\n    server:",
                )],
                "KubeconfigInsecure",
                "insecure-skip-tls-verify",
            ),
            (
                "no current context",
                vec![("current-context: m\n", "")],
                "KubeconfigInvalid",
                "current-context",
            ),
        ];
        for (what, edit, reason, says) in cases {
            let (got, message) = refusal(&edit);
            assert_eq!(got, reason, "{what}: {message}");
            assert!(message.contains(says), "{what}: {message}");
        }
    }

    #[test]
    fn only_the_current_context_counts() {
        // An unused user with an exec plugin and an unused plain-http
        // cluster are never read by the hub.
        let extra = [
            (
                "contexts:\n",
                "- name: unused\n  user:\n    exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/true}\ncontexts:\n",
            ),
            (
                "users:\n",
                "- name: other\n  cluster: {server: \"http://elsewhere\"}\nusers:\n",
            ),
        ];
        assert_eq!(check_kubeconfig(&kubeconfig(&extra)), Ok(()));
        // Pointing the current context at the plain-http cluster is refused.
        let mut switched = extra.to_vec();
        switched.push(("context: {cluster: m,", "context: {cluster: other,"));
        assert_eq!(refusal(&switched).0, "KubeconfigInsecure");
    }
}
