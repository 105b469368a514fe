//! The hub side of a join: the member's kubeconfig Secret and its
//! `MemberCluster`, then the agent's hub identity, confined to the
//! cluster's namespace `tekfed-cluster-<name>`.

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tekfed_api::{MemberCluster, cluster_namespace, rbac};

use super::kubeconfig::{Endpoint, token_kubeconfig};
use super::objects::{
    ensure, ensure_kubeconfig_secret, exists, fields, labels_differ, secret_kubeconfig,
};
use super::tokens::token_for;
use super::{AGENT, HUB_SA, Joining, LOGS_SA, SYSTEM_NAMESPACE};

/// The names of a member's two kubeconfig Secrets on the hub.
pub(super) struct MemberSecrets {
    /// The hub's identity there (`tekfed-hub`).
    pub hub: String,
    /// The log reader (`tekfed-logs`).
    pub logs: String,
}

/// The Secret name on the hub of member `name`'s log reader kubeconfig.
pub(super) fn logs_secret(name: &str) -> String {
    format!("tekfed-member-{name}-logs")
}

/// The Secrets on the hub, in `tekfed-system`, holding the member's
/// kubeconfigs: its server `member_endpoint`, CA, and a token of the hub's
/// identity there (`tekfed-hub`), and one of the log reader
/// (`tekfed-logs`); no key of the user's.
pub(super) async fn member_kubeconfigs(
    h: &Client,
    m: &Client,
    member_endpoint: &Endpoint,
    token_ttl: Duration,
    j: &mut Joining<'_>,
) -> anyhow::Result<MemberSecrets> {
    ensure::<Namespace>(
        &Api::all(h.clone()),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NAMESPACE}}),
        exists,
        j.on_hub(&format!("Namespace {SYSTEM_NAMESPACE}")),
        &mut j.report,
    )
    .await?;
    let names = MemberSecrets {
        hub: format!("tekfed-member-{}", j.name),
        logs: logs_secret(j.name),
    };
    let secrets: Api<Secret> = Api::namespaced(h.clone(), SYSTEM_NAMESPACE);
    for (secret_name, account, what) in [
        (&names.hub, HUB_SA, "member kubeconfig"),
        (&names.logs, LOGS_SA, "member log reader kubeconfig"),
    ] {
        let existing = secret_kubeconfig(&secrets, secret_name).await?;
        let token = token_for(
            m,
            member_endpoint,
            SYSTEM_NAMESPACE,
            account,
            existing.as_deref(),
            token_ttl,
        )
        .await?;
        let kubeconfig = token_kubeconfig(j.name, member_endpoint, account, &token);
        ensure_kubeconfig_secret(
            &secrets,
            secret_name,
            &j.labels,
            &kubeconfig,
            j.on_hub(&format!(
                "Secret {SYSTEM_NAMESPACE}/{secret_name} ({what}: server, CA, token of {account})"
            )),
            &mut j.report,
        )
        .await?;
    }
    Ok(names)
}

/// The MemberCluster: created, or its labels (tekfed's and `extra`) and
/// secretRef and tenancy brought in line (the member's guard holds the same
/// tenancy); the rest of its spec (cordon, taints, cap) is the operator's
/// and kept.
pub(super) async fn member_cluster(
    h: &Client,
    secrets: &MemberSecrets,
    extra: &[(String, String)],
    j: &mut Joining<'_>,
) -> anyhow::Result<()> {
    let name = j.name;
    let mut labels = j.labels.clone();
    for (k, v) in extra {
        labels[k] = json!(v);
    }
    let api: Api<MemberCluster> = Api::all(h.clone());
    let secret_ref = json!({"name": secrets.hub, "namespace": SYSTEM_NAMESPACE});
    let logs_ref = json!({"name": secrets.logs, "namespace": SYSTEM_NAMESPACE});
    let tenancy = serde_json::to_value(&j.tenancy)?;
    // A list no longer given is removed by the merge patch below.
    let mut tenancy_patch = tenancy.clone();
    for list in ["allowNamespaces", "denyNamespaces", "serviceAccounts"] {
        if tenancy_patch.get(list).is_none() {
            tenancy_patch[list] = Value::Null;
        }
    }
    let what = j.on_hub(&format!("MemberCluster {name}"));
    match api
        .get_opt(name)
        .await
        .with_context(|| format!("reading {what}"))?
    {
        None => {
            let mc: MemberCluster = serde_json::from_value(json!({
                "apiVersion": "tekfed.io/v1alpha1", "kind": "MemberCluster",
                "metadata": {"name": name, "labels": labels},
                "spec": {"secretRef": secret_ref, "logsSecretRef": logs_ref, "tenancy": tenancy},
            }))?;
            api.create(&PostParams::default(), &mc)
                .await
                .with_context(|| format!("creating {what}"))?;
            j.report.note("created", what);
        }
        Some(existing) => {
            let current = serde_json::to_value(&existing)?;
            let desired = json!({"metadata": {"labels": labels},
                                 "spec": {"secretRef": secret_ref, "logsSecretRef": logs_ref, "tenancy": tenancy_patch}});
            if labels_differ(&current, &desired)
                || current["spec"]["secretRef"] != secret_ref
                || current["spec"]["logsSecretRef"] != logs_ref
                || existing.spec.tenancy != j.tenancy
            {
                api.patch(name, &PatchParams::default(), &Patch::Merge(&desired))
                    .await
                    .with_context(|| format!("updating {what}"))?;
                j.report.note("updated", what);
            } else {
                j.report.note("unchanged", what);
            }
        }
    }
    Ok(())
}

/// The agent's hub identity: ServiceAccount `tekfed-agent-<name>` in
/// `tekfed-system`, with a Role of [`rbac::agent_on_hub`] in the cluster's
/// namespace (created here) and one of [`rbac::agent_token_on_hub`] in
/// `tekfed-system` (to renew its own token), nowhere else. Returns the
/// account's name.
pub(super) async fn agent_identity(h: &Client, j: &mut Joining<'_>) -> anyhow::Result<String> {
    let labels = j.labels.clone();
    let cluster_ns = cluster_namespace(j.name);
    let agent_sa = agent_account(j.name);
    ensure::<Namespace>(
        &Api::all(h.clone()),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": cluster_ns, "labels": labels}}),
        exists,
        j.on_hub(&format!("Namespace {cluster_ns}")),
        &mut j.report,
    )
    .await?;
    ensure::<ServiceAccount>(
        &Api::namespaced(h.clone(), SYSTEM_NAMESPACE),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": agent_sa, "namespace": SYSTEM_NAMESPACE, "labels": labels}}),
        labels_differ,
        j.on_hub(&format!(
            "ServiceAccount {SYSTEM_NAMESPACE}/{agent_sa} (the agent's hub identity)"
        )),
        &mut j.report,
    )
    .await?;
    ensure::<Role>(
        &Api::namespaced(h.clone(), &cluster_ns),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": AGENT, "namespace": cluster_ns, "labels": labels},
               "rules": rbac::policy_rules(rbac::agent_on_hub())}),
        fields(&["rules"]),
        j.on_hub(&format!(
            "Role {cluster_ns}/{AGENT} (its assignments and report only)"
        )),
        &mut j.report,
    )
    .await?;
    ensure::<RoleBinding>(
        &Api::namespaced(h.clone(), &cluster_ns),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": AGENT, "namespace": cluster_ns, "labels": labels},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": AGENT},
               "subjects": [{"kind": "ServiceAccount", "name": agent_sa, "namespace": SYSTEM_NAMESPACE}]}),
        fields(&["roleRef", "subjects"]),
        j.on_hub(&format!("RoleBinding {cluster_ns}/{AGENT}")),
        &mut j.report,
    )
    .await?;
    // Named as its ServiceAccount: one per member, in tekfed-system.
    ensure::<Role>(
        &Api::namespaced(h.clone(), SYSTEM_NAMESPACE),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": agent_sa, "namespace": SYSTEM_NAMESPACE, "labels": labels},
               "rules": rbac::policy_rules(rbac::agent_token_on_hub(j.name))}),
        fields(&["rules"]),
        j.on_hub(&format!(
            "Role {SYSTEM_NAMESPACE}/{agent_sa} (the agent renews its own token, no other)"
        )),
        &mut j.report,
    )
    .await?;
    ensure::<RoleBinding>(
        &Api::namespaced(h.clone(), SYSTEM_NAMESPACE),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": agent_sa, "namespace": SYSTEM_NAMESPACE, "labels": labels},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": agent_sa},
               "subjects": [{"kind": "ServiceAccount", "name": agent_sa, "namespace": SYSTEM_NAMESPACE}]}),
        fields(&["roleRef", "subjects"]),
        j.on_hub(&format!("RoleBinding {SYSTEM_NAMESPACE}/{agent_sa}")),
        &mut j.report,
    )
    .await?;
    Ok(agent_sa)
}

/// The agent's hub ServiceAccount for member `name`, in `tekfed-system`.
pub(super) fn agent_account(name: &str) -> String {
    rbac::agent_hub_account(name)
}
