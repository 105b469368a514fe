//! The `MemberCluster` controller: reads the kubeconfig Secret each one
//! references, builds (or keeps) the member's client in the
//! [`registry`](super::registry), checks that the member answers with those
//! credentials and serves Tekton, makes the member's own hub namespace and
//! `MemberReport`, and writes its health ([`super::health`]): `Reachable`,
//! `AgentReady` (heartbeats), `Ready`. Runs again when the `MemberCluster`,
//! its Secret or its report changes, and every probe interval.

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
use super::health::fold_member_status;
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
    let outcome = connect(mc, ctx).await;
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
    write_status(mc, ctx, version, report).await?;
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

/// Build a client from the member's Secret and check it works:
/// `(client, server URL, secret resourceVersion, Kubernetes version)`.
async fn connect(
    mc: &MemberCluster,
    ctx: &ClusterContext,
) -> Result<(Client, String, String, String), Unreachable> {
    let r = &mc.spec.secret_ref;
    let ns = r.namespace.clone().unwrap_or_else(|| ctx.namespace.clone());
    let key = r
        .key
        .clone()
        .unwrap_or_else(|| DEFAULT_SECRET_KEY.to_owned());
    let secrets: Api<Secret> = Api::namespaced(ctx.hub.clone(), &ns);
    let secret = secrets
        .get_opt(&r.name)
        .await
        .map_err(|e| Unreachable {
            reason: "SecretUnreadable",
            message: format!("cannot read Secret {ns}/{}: {}", r.name, one_line(&e)),
        })?
        .ok_or_else(|| Unreachable {
            reason: "SecretNotFound",
            message: format!(
                "Secret {ns}/{} not found: create it with the member's kubeconfig under key {key} (kubectl tekfed join does this)",
                r.name
            ),
        })?;
    let data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&key))
        .ok_or_else(|| Unreachable {
            reason: "KubeconfigInvalid",
            message: format!(
                "Secret {ns}/{} has no key {key}; put the member's kubeconfig there",
                r.name
            ),
        })?;
    let text = std::str::from_utf8(&data.0).map_err(|_| Unreachable {
        reason: "KubeconfigInvalid",
        message: format!("Secret {ns}/{} key {key} is not text", r.name),
    })?;
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
    let fingerprint = secret.metadata.resource_version.clone().unwrap_or_default();
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
) -> Result<(), Error> {
    let previous = mc.status.clone().unwrap_or_default();
    let assigned = ctx.members.active_runs(&mc.name_any());
    let new = fold_member_status(
        &previous,
        version,
        report.as_ref(),
        mc.spec.unschedulable,
        assigned,
        ctx.heartbeat_grace,
        k8s_openapi::jiff::Timestamp::now(),
    );
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
