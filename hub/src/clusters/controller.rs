//! The `MemberCluster` controller: reads the kubeconfig Secret each one
//! references, renews the tokens in it and in the log reader's Secret when
//! they are due ([`super::credentials`]), builds (or keeps) the member's
//! client in the [`registry`](super::registry), checks that the member
//! answers with those credentials and serves Tekton, makes the member's
//! own hub namespace and `MemberReport`, and writes its health
//! ([`super::health`]): `Reachable`, `AgentReady` (heartbeats), `Ready`,
//! and `CredentialsExpiring` (with an Event when a renewal starts failing).
//! Runs again when the `MemberCluster`, its Secret or its report changes,
//! and every probe interval.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tekfed_api::{
    MemberCluster, MemberClusterStatus, MemberReport, MemberReportSpec, MemberReportStatus,
    cluster_namespace,
};
use tekfed_runtime::connect::{ConnectError, require_apis, tekton_apis};

use super::Unreachable;
use super::credentials::{KubeconfigSecret, publish, renew_member_tokens};
use super::health::{
    CREDENTIALS_EXPIRING, Credential, HeartbeatView, READY, Seen, agent_credential,
    credentials_condition, disrupted, fold_member_status, observe, silence,
};
use super::registry::{Members, client_from_kubeconfig};
use crate::backoff::ErrorBackoff;
use crate::errors::{one_line, watch_failure};
use crate::ownership::{FIELD_MANAGER, LABEL_MANAGED_BY, MANAGED_BY};

/// The Secret key holding a member kubeconfig when `secretRef.key` is unset.
pub const DEFAULT_SECRET_KEY: &str = "kubeconfig";

/// `MemberCluster`s reconciled at once. A member that does not answer
/// holds its reconcile up to twice three connect timeouts (30 s by
/// default): eight is more members than a small federation has, so a few
/// silent ones never hold up the heartbeat checks of the live ones, while a
/// large fleet is not probed all in the same moment (a new client, TLS and
/// two requests each) when the hub starts.
const CONCURRENCY: u16 = 8;

/// What the `MemberCluster` controller needs.
pub struct ClusterContext {
    pub hub: Client,
    /// Where member Secrets live when `secretRef.namespace` is unset.
    pub namespace: String,
    pub members: Arc<Members>,
    pub probe_interval: Duration,
    pub connect_timeout: Duration,
    /// How old the agent's last heartbeat may be for the member to be Ready.
    pub heartbeat_grace: Duration,
    /// Renew a member token when less than this is left of it; `None`:
    /// when less than a third of its lifetime is (`--renew-before`).
    pub renew_before: Option<Duration>,
    /// Events on `MemberCluster`s (credentials renewed, or not).
    pub recorder: kube::runtime::events::Recorder,
    /// What the hub has seen of each member's heartbeats, on its clock.
    pub heartbeats: Heartbeats,
}

/// What the hub has seen of every member's heartbeats, and since when its
/// own view of them holds (see [`super::health::silence`]). Kept in memory
/// only: a hub that starts (or a replica that starts leading) has seen
/// nothing yet, and counts each member's grace from its first look.
pub struct Heartbeats {
    seen: DashMap<String, Seen>,
    view_since: Mutex<Timestamp>,
}

impl Default for Heartbeats {
    fn default() -> Self {
        Self {
            seen: DashMap::new(),
            view_since: Mutex::new(Timestamp::now()),
        }
    }
}

impl Heartbeats {
    /// The hub could not read the reports (its API server down, a watch
    /// that failed): what it saw before is no measure of the members, and
    /// every grace starts again from now.
    pub fn interrupted(&self) {
        *self.view_since.lock().unwrap_or_else(|p| p.into_inner()) = Timestamp::now();
    }

    /// Take in a member's report as read now, and say how its heartbeats
    /// look from the hub, beside every other member's.
    fn view(
        &self,
        cluster: &str,
        report: Option<&MemberReportStatus>,
        grace: Duration,
    ) -> HeartbeatView {
        let now = Timestamp::now();
        let heartbeat = report.and_then(|r| r.heartbeat_time.as_ref());
        let seen = observe(self.seen.get(cluster).as_deref(), heartbeat, now);
        match &seen {
            Some(s) => {
                self.seen.insert(cluster.to_owned(), s.clone());
            }
            None => {
                self.seen.remove(cluster);
            }
        }
        let since = *self.view_since.lock().unwrap_or_else(|p| p.into_inner());
        // Every member judged at the same instant, so one silence is
        // weighed against the others as they are now; a member silent for
        // half the grace counts as going silent with it, so members that
        // stopped together are not judged one by one as each crosses.
        let silent = self
            .seen
            .iter()
            .filter(|s| silence(Some(s.value()), since, now).is_some_and(|d| d > grace / 2))
            .count();
        HeartbeatView {
            silence: silence(seen.as_ref(), since, now),
            seen_at: seen.map(|s| s.at),
            disrupted: disrupted(silent, self.seen.len()),
        }
    }

    fn forget(&self, cluster: &str) {
        self.seen.remove(cluster);
    }
}

impl ClusterContext {
    /// How often a member is looked at again: soon enough to see a
    /// heartbeat go stale within the grace.
    fn recheck(&self) -> Duration {
        self.probe_interval
            .min(self.heartbeat_grace / 2)
            .max(Duration::from_secs(1))
    }
}

/// A `MemberCluster` the hub could not reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing the status of MemberCluster {name}: {}", one_line(.source))]
    Status { name: String, source: kube::Error },
    #[error("removing the hub namespace of MemberCluster {name}: {}", one_line(.source))]
    Namespace { name: String, source: kube::Error },
    /// Not an error of the hub's: a deleted member keeps its finalizer
    /// until its runs have left it (a cleanup that returns `Ok` lets it go).
    #[error(
        "MemberCluster {name} is deleted; waiting for its runs to leave it ({active} unfinished)"
    )]
    RunsLeaving { name: String, active: String },
}

/// The finalizer on every `MemberCluster`: deleting one first takes its
/// runs off it (moved, or ended as their `onClusterLost` says; see
/// [`crate::runs::moves::Leaving::Removed`]), then removes its hub
/// namespace (its assignments and report).
pub const FINALIZER: &str = "tekfed.io/member-cluster";

/// The controller, ready to run; `store()` gives the `MemberCluster`s it sees.
pub fn controller(ctx: &ClusterContext) -> Controller<MemberCluster> {
    let clusters: Api<MemberCluster> = Api::all(ctx.hub.clone());
    let secrets: Api<Secret> = Api::namespaced(ctx.hub.clone(), &ctx.namespace);
    let controller = Controller::new(clusters, watcher::Config::default())
        .with_config(controller::Config::default().concurrency(CONCURRENCY));
    let store = controller.store();
    let namespace = ctx.namespace.clone();
    let reports: Api<MemberReport> = Api::all(ctx.hub.clone());
    controller
        .watches(secrets, watcher::Config::default(), move |secret| {
            referencing(&store, &namespace, &secret)
        })
        .watches(reports, watcher::Config::default(), |report| {
            Some(ObjectRef::new(&report.spec.cluster))
        })
}

/// Run the controller until the hub stops.
pub async fn run(controller: Controller<MemberCluster>, ctx: Arc<ClusterContext>) {
    let members = ctx.members.clone();
    let heartbeats = ctx.clone();
    let heartbeats = &heartbeats.heartbeats;
    // A failed status write is retried from the old flat wait, doubling up
    // to the healthy recheck interval and never beyond it: health must be
    // looked at within the heartbeat grace, failing or not.
    let retries = Arc::new(ErrorBackoff::new(
        ctx.probe_interval.min(Duration::from_secs(5)),
        ctx.recheck(),
    ));
    let on_error = retries.clone();
    let for_reconcile = retries.clone();
    controller
        .run(
            move |mc, ctx| reconcile(mc, ctx, for_reconcile.clone()),
            move |mc, error, _| {
                use kube::runtime::finalizer::Error as F;
                if let F::CleanupFailed(Error::RunsLeaving { .. }) = error {
                    // Looked at again soon: the dispatcher moves them now.
                    tracing::info!(cluster = %mc.name_any(), %error, "waiting");
                    return Action::requeue(Duration::from_secs(2));
                }
                let wait = on_error.failed(ObjectRef::from_obj(mc.as_ref()).erase());
                tracing::warn!(cluster = %mc.name_any(), %error, retry_in = ?wait, "retrying");
                Action::requeue(wait)
            },
            ctx,
        )
        .for_each(|result| {
            match result {
                Ok(_) => {}
                // A deleted MemberCluster: its client and watches go.
                Err(controller::Error::ObjectNotFound(gone)) => {
                    retries.succeeded(&gone);
                    members.remove(&gone.name);
                    heartbeats.forget(&gone.name);
                }
                // Logged by the error policy.
                Err(controller::Error::ReconcilerFailed(..)) => {}
                Err(controller::Error::QueueError(e)) => {
                    // The hub could not reach its API server: the watch on
                    // reports may have missed heartbeats. (An answer such as
                    // 410 Gone, on which the watcher lists again, is not.)
                    if !matches!(e, watcher::Error::WatchError(_)) {
                        heartbeats.interrupted();
                    }
                    tracing::warn!(error = %watch_failure(&e), "watching MemberClusters, their Secrets or reports; retrying")
                }
                Err(e) => tracing::warn!(error = %e, "member cluster reconcile failed"),
            }
            futures::future::ready(())
        })
        .await;
}

/// The `MemberCluster`s whose secretRef names `secret`.
fn referencing(
    store: &Store<MemberCluster>,
    default_ns: &str,
    secret: &Secret,
) -> Vec<ObjectRef<MemberCluster>> {
    let (name, ns) = (secret.name_any(), secret.namespace().unwrap_or_default());
    store
        .state()
        .iter()
        .filter(|mc| {
            mc.spec.secret_ref.name == name
                && mc
                    .spec
                    .secret_ref
                    .namespace
                    .as_deref()
                    .unwrap_or(default_ns)
                    == ns
        })
        .map(|mc| ObjectRef::from_obj(mc.as_ref()))
        .collect()
}

/// Reconcile one `MemberCluster`; a success starts its error backoff over.
#[tracing::instrument(skip(mc, ctx, retries), fields(kind = "MemberCluster", name = %mc.name_any()))]
async fn reconcile(
    mc: Arc<MemberCluster>,
    ctx: Arc<ClusterContext>,
    retries: Arc<ErrorBackoff>,
) -> Result<Action, kube::runtime::finalizer::Error<Error>> {
    use kube::runtime::finalizer::{Event, finalizer};
    let key = ObjectRef::from_obj(mc.as_ref()).erase();
    let api: Api<MemberCluster> = Api::all(ctx.hub.clone());
    let action = finalizer(&api, FINALIZER, mc, |event| async {
        match event {
            Event::Apply(mc) => probe_and_report(&mc, &ctx).await,
            Event::Cleanup(mc) => remove(&mc, &ctx).await,
        }
    })
    .await?;
    retries.succeeded(&key);
    Ok(action)
}

/// A `MemberCluster` being deleted: once no unfinished run is on it (the
/// dispatcher takes them off), its hub namespace goes, and with it its
/// assignments and report.
async fn remove(mc: &MemberCluster, ctx: &ClusterContext) -> Result<Action, Error> {
    let name = mc.name_any();
    match ctx.members.counted_active_runs(&name) {
        Some(0) => {}
        active => {
            ctx.members.schedule.notify_one();
            return Err(Error::RunsLeaving {
                name,
                active: active.map_or("not counted yet".into(), |n| n.to_string()),
            });
        }
    }
    let namespaces: Api<Namespace> = Api::all(ctx.hub.clone());
    match namespaces
        .delete(&cluster_namespace(&name), &Default::default())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(source) => return Err(Error::Namespace { name, source }),
    }
    tracing::info!(cluster = %name, "MemberCluster removed: no run is on it, its hub namespace is deleted");
    ctx.members.remove(&name);
    ctx.heartbeats.forget(&name);
    Ok(Action::await_change())
}

async fn probe_and_report(mc: &MemberCluster, ctx: &ClusterContext) -> Result<Action, Error> {
    let name = mc.name_any();
    let mut credentials = Vec::new();
    let outcome = match KubeconfigSecret::read(&ctx.hub, &ctx.namespace, &mc.spec.secret_ref).await
    {
        Ok(mut secret) => {
            // The log reader's Secret unreadable is the log API's to say.
            let mut logs = match &mc.spec.logs_secret_ref {
                Some(r) => KubeconfigSecret::read(&ctx.hub, &ctx.namespace, r)
                    .await
                    .ok(),
                None => None,
            };
            credentials = renew_member_tokens(mc, ctx, &mut secret, logs.as_mut()).await;
            connect(mc, ctx, &secret).await
        }
        Err(why) => Err(why),
    };
    let version = match outcome {
        Ok((client, server, fingerprint, version)) => {
            let created = mc
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_millisecond())
                .unwrap_or(i64::MAX);
            ctx.members
                .connected(
                    &name,
                    client,
                    &server,
                    &fingerprint,
                    (created, name.clone()),
                )
                .map(|()| version)
        }
        Err(why) => {
            tracing::info!(reason = why.reason, message = %why.message, "member not reachable");
            ctx.members.unreachable(&name, why.clone());
            Err(why)
        }
    };
    // Placement reads labels and taints from the MemberCluster itself, so
    // any change to one is a reason to look at every federated object.
    ctx.members
        .notify_if_changed(&name, mc.labels(), &mc.spec.taints, &mc.spec.tenancy);
    let Ok(report) = ensure_cluster_namespace(ctx, &name).await else {
        // Judging health without the report would judge the hub's outage.
        return Ok(Action::requeue(ctx.recheck()));
    };
    credentials.extend(agent_credential(report.as_ref()));
    write_status(mc, ctx, version, report, &credentials).await?;
    // Look again soon enough to see a heartbeat go stale within the grace.
    Ok(Action::requeue(ctx.recheck()))
}

/// The member's own hub namespace (`tekfed-cluster-<name>`) and its
/// `MemberReport` exist; returns what the agent last reported, or `Err`
/// when the hub could not read it.
async fn ensure_cluster_namespace(
    ctx: &ClusterContext,
    cluster: &str,
) -> Result<Option<MemberReportStatus>, ()> {
    let namespace = cluster_namespace(cluster);
    let reports: Api<MemberReport> = Api::namespaced(ctx.hub.clone(), &namespace);
    match reports.get_opt(cluster).await {
        Ok(Some(report)) => return Ok(report.status),
        Ok(None) => {}
        Err(e) => {
            // Not a member's silence: the hub's own view is interrupted.
            ctx.heartbeats.interrupted();
            tracing::warn!(%cluster, error = %one_line(&e), "cannot read the cluster's MemberReport");
            return Err(());
        }
    }
    let namespaces: Api<Namespace> = Api::all(ctx.hub.clone());
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": {LABEL_MANAGED_BY: MANAGED_BY, "tekfed.io/cluster": cluster}}});
    if let Err(e) = namespaces
        .patch(
            &namespace,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(&ns),
        )
        .await
    {
        tracing::warn!(%cluster, error = %one_line(&e), "cannot create the cluster's hub namespace");
        return Ok(None);
    }
    let report = MemberReport::new(
        cluster,
        MemberReportSpec {
            cluster: cluster.to_owned(),
        },
    );
    match reports.create(&PostParams::default(), &report).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => {
            tracing::warn!(%cluster, error = %one_line(&e), "cannot create the cluster's MemberReport")
        }
    }
    Ok(None)
}

/// Build a client from the member's kubeconfig `secret` and check it
/// works: `(client, server URL, secret resourceVersion, Kubernetes
/// version)`.
async fn connect(
    mc: &MemberCluster,
    ctx: &ClusterContext,
    secret: &KubeconfigSecret,
) -> Result<(Client, String, String, String), Unreachable> {
    let text = secret.text.as_str();
    let (client, server) = client_from_kubeconfig(text, ctx.connect_timeout).await?;
    let probe_timeout = ctx.connect_timeout * 3;
    let version = tokio::time::timeout(probe_timeout, client.apiserver_version())
        .await
        .map_err(|_| Unreachable {
            reason: "Unreachable",
            message: format!("the member's API server did not answer within {probe_timeout:?}"),
        })?
        .map_err(|e| Unreachable {
            reason: "Unreachable",
            message: member_failure("GET /version", &e),
        })?;
    tokio::time::timeout(
        probe_timeout,
        require_apis(&client, &mc.name_any(), &tekton_apis()),
    )
    .await
    .map_err(|_| Unreachable {
        reason: "Unreachable",
        message: format!("the member's API server did not answer within {probe_timeout:?}"),
    })?
    .map_err(|e| match e {
        ConnectError::MissingApis { missing, .. } => Unreachable {
            reason: "TektonMissing",
            message: format!("the member does not serve {missing}: install Tekton Pipelines there"),
        },
        ConnectError::Unreachable { source, .. } => Unreachable {
            reason: "Unauthorized",
            message: format!(
                "the member refused the hub's credentials or failed: {}",
                member_failure("listing Tekton's APIs", &source)
            ),
        },
        // require_apis fails in no other way; said without its text, which
        // could carry a member's answer.
        _ => Unreachable {
            reason: "Unauthorized",
            message: "the member failed the check that it serves Tekton's APIs".into(),
        },
    })?;
    let fingerprint = secret.resource_version.clone();
    Ok((client, server, fingerprint, version.git_version))
}

/// What a member answered `request` with, for its `Reachable` condition:
/// the HTTP code and the reason or message of a Kubernetes `Status`, never
/// the body of any other answer ([`one_line`]).
fn member_failure(request: &str, error: &kube::Error) -> String {
    match error {
        kube::Error::Api(_) => format!(
            "the member's API server answered {request} with {}",
            one_line(error)
        ),
        _ => format!(
            "cannot reach the member's API server ({request}): {}",
            one_line(error)
        ),
    }
}

async fn write_status(
    mc: &MemberCluster,
    ctx: &ClusterContext,
    version: Result<String, Unreachable>,
    report: Option<MemberReportStatus>,
    credentials: &[Credential],
) -> Result<(), Error> {
    let previous = mc.status.clone().unwrap_or_default();
    let assigned = ctx.members.active_runs(&mc.name_any());
    let heartbeats = ctx
        .heartbeats
        .view(&mc.name_any(), report.as_ref(), ctx.heartbeat_grace);
    let now = Timestamp::now();
    let mut new = fold_member_status(
        &previous,
        version,
        report.as_ref(),
        heartbeats,
        mc.spec.unschedulable,
        assigned,
        ctx.heartbeat_grace,
        now,
    );
    let expiring = credentials_condition(&previous, &mc.name_any(), credentials, now);
    let was = previous
        .conditions
        .iter()
        .find(|c| c.type_ == CREDENTIALS_EXPIRING);
    if expiring.status == "True" && was.is_none_or(|c| c.status != "True") {
        publish(
            ctx,
            mc,
            kube::runtime::events::EventType::Warning,
            "CredentialsExpiring",
            expiring.message.clone(),
        );
    }
    new.conditions.push(expiring);
    if new == previous {
        return Ok(());
    }
    // Each change of Ready is told: an operator reading the hub's log (or
    // a failed test's) sees when a member stopped or started taking runs.
    let ready = |s: &MemberClusterStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == READY)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    if let Some((status, reason, message)) = ready(&new)
        && ready(&previous).map(|r| (r.0, r.1)) != Some((status.clone(), reason.clone()))
    {
        tracing::info!(cluster = %mc.name_any(), ready = %status, %reason, %message, "member readiness changed");
    }
    let api: Api<MemberCluster> = Api::all(ctx.hub.clone());
    let patch = json!({"apiVersion": "tekfed.io/v1alpha1", "kind": "MemberCluster", "status": new});
    api.patch_status(
        &mc.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await
    .map_err(|source| Error::Status {
        name: mc.name_any(),
        source,
    })?;
    // Room may have appeared (or gone): let the scheduler look again.
    ctx.members.schedule.notify_one();
    Ok(())
}
