//! Reconciles `MemberCluster`s: reads the kubeconfig Secret each one
//! references, builds (or keeps) the member's client, checks that the
//! member answers with those credentials and serves Tekton, and says so in
//! the `Reachable` condition. Runs again when the `MemberCluster` or its
//! Secret changes, and every probe interval.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tekfed_crds::connect::{require_apis, tekton_apis};
use tekfed_crds::{MemberCluster, MemberClusterStatus};

use crate::members::{Members, Unreachable, client_from_kubeconfig};
use crate::ownership::FIELD_MANAGER;

/// The condition saying whether the hub reaches the member.
pub const REACHABLE: &str = "Reachable";
/// The Secret key holding a member kubeconfig when `secretRef.key` is unset.
pub const DEFAULT_SECRET_KEY: &str = "kubeconfig";

/// What the member controller needs.
pub struct MemberContext {
    pub hub: Client,
    /// Where member Secrets live when `secretRef.namespace` is unset.
    pub namespace: String,
    pub members: Arc<Members>,
    pub probe_interval: Duration,
    pub connect_timeout: Duration,
}

/// A `MemberCluster` the hub could not reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing the status of MemberCluster {name}: {source}")]
    Status { name: String, source: kube::Error },
}

/// The controller, ready to run; `store()` gives the `MemberCluster`s it sees.
pub fn controller(ctx: &MemberContext) -> Controller<MemberCluster> {
    let clusters: Api<MemberCluster> = Api::all(ctx.hub.clone());
    let secrets: Api<Secret> = Api::namespaced(ctx.hub.clone(), &ctx.namespace);
    let controller = Controller::new(clusters, watcher::Config::default());
    let store = controller.store();
    let namespace = ctx.namespace.clone();
    controller.watches(secrets, watcher::Config::default(), move |secret| {
        referencing(&store, &namespace, &secret)
    })
}

/// Run the controller until the hub stops.
pub async fn run(controller: Controller<MemberCluster>, ctx: Arc<MemberContext>) {
    let members = ctx.members.clone();
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            match result {
                Ok(_) => {}
                // A deleted MemberCluster: its client and watches go.
                Err(controller::Error::ObjectNotFound(gone)) => members.remove(&gone.name),
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

async fn reconcile(mc: Arc<MemberCluster>, ctx: Arc<MemberContext>) -> Result<Action, Error> {
    let name = mc.name_any();
    let outcome = connect(&mc, &ctx).await;
    let version = match outcome {
        Ok((client, server, fingerprint, version)) => ctx
            .members
            .connected(&name, client, &server, &fingerprint)
            .map(|()| version),
        Err(why) => {
            tracing::info!(cluster = %name, reason = why.reason, message = %why.message, "member not reachable");
            ctx.members.unreachable(&name, why.clone());
            Err(why)
        }
    };
    // Placement reads labels and taints from the MemberCluster itself, so
    // any change to one is a reason to look at every federated object.
    ctx.members
        .notify_if_changed(&name, mc.labels(), &mc.spec.taints);
    write_status(&mc, &ctx, version).await?;
    Ok(Action::requeue(ctx.probe_interval))
}

fn error_policy(_: Arc<MemberCluster>, error: &Error, ctx: Arc<MemberContext>) -> Action {
    tracing::warn!(%error, "retrying");
    Action::requeue(ctx.probe_interval.min(Duration::from_secs(5)))
}

/// Build a client from the member's Secret and check it works:
/// `(client, server URL, secret resourceVersion, Kubernetes version)`.
async fn connect(
    mc: &MemberCluster,
    ctx: &MemberContext,
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
            message: format!("cannot read Secret {ns}/{}: {e}", r.name),
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
            message: format!("cannot reach the member's API server: {e}"),
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
        tekfed_crds::connect::ConnectError::MissingApis { missing, .. } => Unreachable {
            reason: "TektonMissing",
            message: format!("the member does not serve {missing}: install Tekton Pipelines there"),
        },
        other => Unreachable {
            reason: "Unauthorized",
            message: format!("the member refused the hub's credentials or failed: {other}"),
        },
    })?;
    let fingerprint = secret.metadata.resource_version.clone().unwrap_or_default();
    Ok((client, server, fingerprint, version.git_version))
}

async fn write_status(
    mc: &MemberCluster,
    ctx: &MemberContext,
    version: Result<String, Unreachable>,
) -> Result<(), Error> {
    let previous = mc.status.clone().unwrap_or_default();
    let (status, reason, message, kubernetes_version) = match version {
        Ok(v) => (
            "True",
            "Connected".to_owned(),
            "the hub reaches the member's API server".to_owned(),
            Some(v),
        ),
        Err(u) => (
            "False",
            u.reason.to_owned(),
            u.message,
            previous.kubernetes_version.clone(),
        ),
    };
    let old = previous.conditions.iter().find(|c| c.type_ == REACHABLE);
    if old.is_some_and(|c| c.status == status && c.reason == reason && c.message == message)
        && previous.kubernetes_version == kubernetes_version
    {
        return Ok(());
    }
    let condition = Condition {
        type_: REACHABLE.to_owned(),
        status: status.to_owned(),
        reason,
        message,
        observed_generation: mc.metadata.generation,
        last_transition_time: old
            .filter(|c| c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now())),
    };
    let status = MemberClusterStatus {
        conditions: vec![condition],
        kubernetes_version,
        ..Default::default()
    };
    let api: Api<MemberCluster> = Api::all(ctx.hub.clone());
    let patch =
        json!({"apiVersion": "tekfed.io/v1alpha1", "kind": "MemberCluster", "status": status});
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
    Ok(())
}
