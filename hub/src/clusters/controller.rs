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

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tekfed_api::{
    MemberCluster, MemberReport, MemberReportSpec, MemberReportStatus, cluster_namespace,
};
use tekfed_runtime::connect::{ConnectError, require_apis, tekton_apis};

use super::Unreachable;
use super::credentials::{KubeconfigSecret, publish, renew_member_tokens};
use super::health::{
    CREDENTIALS_EXPIRING, Credential, agent_credential, credentials_condition, fold_member_status,
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
}

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
                }
                // Logged by the error policy.
                Err(controller::Error::ReconcilerFailed(..)) => {}
                Err(controller::Error::QueueError(e)) => {
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
) -> Result<Action, Error> {
    let action = probe_and_report(&mc, &ctx).await?;
    retries.succeeded(&ObjectRef::from_obj(mc.as_ref()).erase());
    Ok(action)
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
    let report = ensure_cluster_namespace(ctx, &name).await;
    credentials.extend(agent_credential(report.as_ref()));
    write_status(mc, ctx, version, report, &credentials).await?;
    // Look again soon enough to see a heartbeat go stale within the grace.
    Ok(Action::requeue(ctx.recheck()))
}

/// The member's own hub namespace (`tekfed-cluster-<name>`) and its
/// `MemberReport` exist; returns what the agent last reported.
async fn ensure_cluster_namespace(
    ctx: &ClusterContext,
    cluster: &str,
) -> Option<MemberReportStatus> {
    let namespace = cluster_namespace(cluster);
    let reports: Api<MemberReport> = Api::namespaced(ctx.hub.clone(), &namespace);
    if let Ok(Some(report)) = reports.get_opt(cluster).await {
        return report.status;
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
        return None;
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
    None
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
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut new = fold_member_status(
        &previous,
        version,
        report.as_ref(),
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
