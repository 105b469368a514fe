//! Reconciles `MemberCluster`s: reads the kubeconfig Secret each one
//! references, builds (or keeps) the member's client, checks that the
//! member answers with those credentials and serves Tekton, and says so in
//! the `Reachable` condition. Runs again when the `MemberCluster` or its
//! Secret changes, and every probe interval.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
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
use tekfed_runtime::connect::{require_apis, tekton_apis};

use crate::members::{Members, Unreachable, client_from_kubeconfig};
use crate::ownership::{FIELD_MANAGER, LABEL_MANAGED_BY, MANAGED_BY};

/// The condition saying whether the hub reaches the member.
pub const REACHABLE: &str = "Reachable";
/// The condition saying whether the member's agent heartbeat is fresh.
pub const AGENT_READY: &str = "AgentReady";
/// Reachable and AgentReady: runs may be scheduled here.
pub const READY: &str = "Ready";
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
    /// How old the agent's last heartbeat may be for the member to be Ready.
    pub heartbeat_grace: Duration,
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
            tracing::info!(cluster = %name, reason = why.reason, message = %why.message, "member not reachable");
            ctx.members.unreachable(&name, why.clone());
            Err(why)
        }
    };
    // Placement reads labels and taints from the MemberCluster itself, so
    // any change to one is a reason to look at every federated object.
    ctx.members
        .notify_if_changed(&name, mc.labels(), &mc.spec.taints);
    let report = ensure_cluster_namespace(&ctx, &name).await;
    write_status(&mc, &ctx, version, report).await?;
    // Look again soon enough to see a heartbeat go stale within the grace.
    Ok(Action::requeue(
        ctx.probe_interval
            .min(ctx.heartbeat_grace / 2)
            .max(Duration::from_secs(1)),
    ))
}

fn error_policy(_: Arc<MemberCluster>, error: &Error, ctx: Arc<MemberContext>) -> Action {
    tracing::warn!(%error, "retrying");
    Action::requeue(ctx.probe_interval.min(Duration::from_secs(5)))
}

/// The member's own hub namespace (`tekfed-cluster-<name>`) and its
/// `MemberReport` exist; returns what the agent last reported.
async fn ensure_cluster_namespace(
    ctx: &MemberContext,
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
        tracing::warn!(%cluster, error = %e, "cannot create the cluster's hub namespace");
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
        Err(e) => tracing::warn!(%cluster, error = %e, "cannot create the cluster's MemberReport"),
    }
    None
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
        tekfed_runtime::connect::ConnectError::MissingApis { missing, .. } => Unreachable {
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

/// The `MemberCluster` status from what the hub saw (`version`: the probe)
/// and what the agent reported. `Ready` = `Reachable` and `AgentReady` (a
/// heartbeat younger than `grace`); runs need `Ready`.
pub fn fold_member_status(
    previous: &MemberClusterStatus,
    version: Result<String, Unreachable>,
    report: Option<&MemberReportStatus>,
    unschedulable: bool,
    assigned: i64,
    grace: Duration,
    now: k8s_openapi::jiff::Timestamp,
) -> MemberClusterStatus {
    let (reachable, reason, message, kubernetes_version) = match version {
        Ok(v) => (
            true,
            "Connected".to_owned(),
            "the hub reaches the member's API server".to_owned(),
            Some(v),
        ),
        Err(u) => (
            false,
            u.reason.to_owned(),
            u.message,
            previous.kubernetes_version.clone(),
        ),
    };
    let heartbeat = report.and_then(|r| r.heartbeat_time.clone());
    let age = heartbeat
        .as_ref()
        .map(|t| now.duration_since(t.0).unsigned_abs());
    let (agent_ready, agent_reason, agent_message) = match age {
        None => (
            false,
            "NoHeartbeat",
            "no heartbeat from the member's agent yet; is tekfed-agent running there?".to_owned(),
        ),
        Some(age) if age <= grace => (
            true,
            "HeartbeatFresh",
            format!("last heartbeat {}s ago", age.as_secs()),
        ),
        Some(age) => (
            false,
            "HeartbeatLost",
            format!(
                "no heartbeat for {}s (grace {}s)",
                age.as_secs(),
                grace.as_secs()
            ),
        ),
    };
    let ready = reachable && agent_ready;
    let (ready_reason, ready_message) = if ready {
        (
            "Ready".to_owned(),
            "reachable, and the agent's heartbeat is fresh".to_owned(),
        )
    } else if !reachable {
        (reason.clone(), message.clone())
    } else {
        (agent_reason.to_owned(), agent_message.clone())
    };
    let condition = |type_: &str, ok: bool, reason: String, message: String| {
        let old = previous.conditions.iter().find(|c| c.type_ == type_);
        let status = if ok { "True" } else { "False" };
        Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason,
            message,
            observed_generation: None,
            last_transition_time: old
                .filter(|c| c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now)),
        }
    };
    MemberClusterStatus {
        conditions: vec![
            condition(REACHABLE, reachable, reason, message),
            condition(
                AGENT_READY,
                agent_ready,
                agent_reason.to_owned(),
                agent_message,
            ),
            condition(READY, ready, ready_reason, ready_message),
        ],
        schedulable: Some(ready && !unschedulable),
        last_heartbeat_time: heartbeat,
        kubernetes_version: report
            .and_then(|r| r.kubernetes_version.clone())
            .or(kubernetes_version),
        tekton_version: report.and_then(|r| r.tekton_version.clone()),
        load: report.and_then(|r| r.load.clone()),
        assigned_runs: Some(assigned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> k8s_openapi::jiff::Timestamp {
        k8s_openapi::jiff::Timestamp::from_second(s).unwrap()
    }

    fn report(heartbeat: i64) -> MemberReportStatus {
        MemberReportStatus {
            heartbeat_time: Some(Time(at(heartbeat))),
            load: Some(tekfed_api::ClusterLoad {
                running: 3,
                pending: 1,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn status_of(s: &MemberClusterStatus, type_: &str) -> (String, String) {
        let c = s.conditions.iter().find(|c| c.type_ == type_).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn ready_needs_reachable_and_a_fresh_heartbeat() {
        let grace = Duration::from_secs(30);
        let fresh = fold_member_status(
            &Default::default(),
            Ok("v1.37.2".into()),
            Some(&report(100)),
            false,
            2,
            grace,
            at(110),
        );
        assert_eq!(status_of(&fresh, READY), ("True".into(), "Ready".into()));
        assert_eq!(fresh.schedulable, Some(true));
        assert_eq!(fresh.load.as_ref().unwrap().running, 3);
        assert_eq!(fresh.assigned_runs, Some(2));

        let lost = fold_member_status(
            &fresh,
            Ok("v1.37.2".into()),
            Some(&report(100)),
            false,
            2,
            grace,
            at(200),
        );
        assert_eq!(
            status_of(&lost, AGENT_READY),
            ("False".into(), "HeartbeatLost".into())
        );
        assert_eq!(
            status_of(&lost, READY),
            ("False".into(), "HeartbeatLost".into())
        );
        assert_eq!(lost.schedulable, Some(false));

        let none = fold_member_status(
            &Default::default(),
            Ok("v1.37.2".into()),
            None,
            false,
            0,
            grace,
            at(200),
        );
        assert_eq!(status_of(&none, AGENT_READY).1, "NoHeartbeat");

        let down = Unreachable {
            reason: "Unreachable",
            message: "connection refused".into(),
        };
        let unreachable = fold_member_status(
            &fresh,
            Err(down),
            Some(&report(195)),
            false,
            0,
            grace,
            at(200),
        );
        assert_eq!(
            status_of(&unreachable, READY),
            ("False".into(), "Unreachable".into())
        );
    }

    #[test]
    fn a_cordoned_ready_cluster_is_not_schedulable() {
        let s = fold_member_status(
            &Default::default(),
            Ok("v".into()),
            Some(&report(100)),
            true,
            0,
            Duration::from_secs(30),
            at(101),
        );
        assert_eq!(status_of(&s, READY).0, "True");
        assert_eq!(s.schedulable, Some(false));
    }

    #[test]
    fn transition_times_hold_while_nothing_changes() {
        let grace = Duration::from_secs(30);
        let first = fold_member_status(
            &Default::default(),
            Ok("v".into()),
            Some(&report(100)),
            false,
            0,
            grace,
            at(101),
        );
        let later = fold_member_status(
            &first,
            Ok("v".into()),
            Some(&report(100)),
            false,
            0,
            grace,
            at(105),
        );
        assert_eq!(
            first.conditions[0].last_transition_time,
            later.conditions[0].last_transition_time
        );
    }
}
