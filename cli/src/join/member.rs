//! The member side of a join: the hub's identity there (namespace
//! `tekfed-system`, ServiceAccount `tekfed-hub`, its ClusterRole and
//! binding), the log reader's, the Role with which the hub renews both
//! tokens, and the agent's hub kubeconfig.

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::Client;
use kube::api::Api;
use serde_json::json;
use tekfed_api::{guard, rbac};

use super::kubeconfig::{Endpoint, token_kubeconfig};
use super::objects::{
    ensure, ensure_kubeconfig_secret, exists, fields, labels_differ, not_contained,
    secret_kubeconfig,
};
use super::tokens::token_for;
use super::{
    AGENT_SECRET, HUB_SA, HUB_TOKENS_ROLE, Joining, LOGS_SA, MANAGED_BY, SYSTEM_NAMESPACE,
};
use anyhow::Context as _;

/// Namespace `tekfed-system`, and in it the ServiceAccount the hub uses on
/// this member, bound to a ClusterRole of [`rbac::hub_on_member`].
pub(super) async fn hub_identity(m: &Client, j: &mut Joining<'_>) -> anyhow::Result<()> {
    let labels = j.labels.clone();
    ensure::<Namespace>(
        &Api::all(m.clone()),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NAMESPACE, "labels": {MANAGED_BY.0: MANAGED_BY.1}}}),
        exists,
        j.on_member(&format!("Namespace {SYSTEM_NAMESPACE}")),
        &mut j.report,
    )
    .await?;
    // The guard first: the hub's identity is never without it.
    member_guard(m, j).await?;
    ensure::<ServiceAccount>(
        &Api::namespaced(m.clone(), SYSTEM_NAMESPACE),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": HUB_SA, "namespace": SYSTEM_NAMESPACE, "labels": labels}}),
        labels_differ,
        j.on_member(&format!("ServiceAccount {SYSTEM_NAMESPACE}/{HUB_SA}")),
        &mut j.report,
    )
    .await?;
    ensure::<ClusterRole>(
        &Api::all(m.clone()),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": HUB_SA, "labels": labels},
               "rules": rbac::policy_rules(rbac::hub_on_member())}),
        fields(&["rules"]),
        j.on_member(&format!(
            "ClusterRole {HUB_SA} (Tekton objects, namespaces, and by name what runs need)"
        )),
        &mut j.report,
    )
    .await?;
    ensure::<ClusterRoleBinding>(
        &Api::all(m.clone()),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": HUB_SA, "labels": labels},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": HUB_SA},
               "subjects": [{"kind": "ServiceAccount", "name": HUB_SA, "namespace": SYSTEM_NAMESPACE}]}),
        fields(&["roleRef", "subjects"]),
        j.on_member(&format!("ClusterRoleBinding {HUB_SA}")),
        &mut j.report,
    )
    .await?;
    logs_identity(m, j).await?;
    hub_tokens(m, j).await
}

/// The Role with which the hub renews its token and the log reader's
/// ([`rbac::hub_tokens_on_member`]): in `tekfed-system`, so a ServiceAccount
/// of the same name in another namespace cannot be minted.
async fn hub_tokens(m: &Client, j: &mut Joining<'_>) -> anyhow::Result<()> {
    let labels = j.labels.clone();
    ensure::<Role>(
        &Api::namespaced(m.clone(), SYSTEM_NAMESPACE),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": HUB_TOKENS_ROLE, "namespace": SYSTEM_NAMESPACE, "labels": labels},
               "rules": rbac::policy_rules(rbac::hub_tokens_on_member())}),
        fields(&["rules"]),
        j.on_member(&format!(
            "Role {SYSTEM_NAMESPACE}/{HUB_TOKENS_ROLE} (the hub renews its token and the log reader's, no other)"
        )),
        &mut j.report,
    )
    .await?;
    ensure::<RoleBinding>(
        &Api::namespaced(m.clone(), SYSTEM_NAMESPACE),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": HUB_TOKENS_ROLE, "namespace": SYSTEM_NAMESPACE, "labels": labels},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": HUB_TOKENS_ROLE},
               "subjects": [{"kind": "ServiceAccount", "name": HUB_SA, "namespace": SYSTEM_NAMESPACE}]}),
        fields(&["roleRef", "subjects"]),
        j.on_member(&format!("RoleBinding {SYSTEM_NAMESPACE}/{HUB_TOKENS_ROLE}")),
        &mut j.report,
    )
    .await?;
    Ok(())
}

/// The member's guard ([`guard::member_policy`]): what the hub's identity
/// may write there, whatever the hub asks, from this join's tenancy
/// written into the policy itself, and its binding.
async fn member_guard(m: &Client, j: &mut Joining<'_>) -> anyhow::Result<()> {
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(m.clone());
    let existing = policies
        .get_metadata_opt(guard::GUARD_POLICY)
        .await
        .with_context(|| format!("reading ValidatingAdmissionPolicy {}", guard::GUARD_POLICY))?;
    if existing.is_some_and(|p| {
        p.metadata
            .labels
            .is_some_and(|l| l.get(MANAGED_BY.0).map(String::as_str) == Some("Helm"))
    }) {
        // The agent chart's guard (guard.create): its values are the terms.
        j.report.note(
            "kept",
            j.on_member(&format!(
                "ValidatingAdmissionPolicy {} (the tekfed-member-agent chart's guard: its guard.* values, not these flags, are this member's terms)",
                guard::GUARD_POLICY
            )),
        );
        return Ok(());
    }
    ensure::<ValidatingAdmissionPolicy>(
        &Api::all(m.clone()),
        serde_json::to_value(guard::member_policy(&j.tenancy))?,
        not_contained(&["spec"]),
        j.on_member(&format!(
            "ValidatingAdmissionPolicy {} (the hub's writes here: namespaces {}, Pod Security level {}, ServiceAccounts with rights {})",
            guard::GUARD_POLICY,
            terms(&j.tenancy.allow_namespaces, &j.tenancy.deny_namespaces),
            j.tenancy.pod_security.as_str(),
            if j.tenancy.service_accounts.is_empty() { "none".to_owned() } else { j.tenancy.service_accounts.join(", ") },
        )),
        &mut j.report,
    )
    .await?;
    ensure::<ValidatingAdmissionPolicyBinding>(
        &Api::all(m.clone()),
        serde_json::to_value(guard::member_binding())?,
        not_contained(&["spec"]),
        j.on_member(&format!(
            "ValidatingAdmissionPolicyBinding {}",
            guard::GUARD_POLICY
        )),
        &mut j.report,
    )
    .await?;
    Ok(())
}

/// The namespaces a guard opens, in words.
fn terms(allow: &[String], deny: &[String]) -> String {
    let mut words = if allow.is_empty() {
        "all but kube-*, tekton-*, tekfed-system".to_owned()
    } else {
        allow.join(", ")
    };
    if !deny.is_empty() {
        words.push_str(&format!(" and not {}", deny.join(", ")));
    }
    words
}

/// The identity the hub reads run logs with on this member, apart from
/// its own: ServiceAccount `tekfed-logs` bound to a ClusterRole of
/// [`rbac::logs_on_member`] (pods and their logs, read-only).
async fn logs_identity(m: &Client, j: &mut Joining<'_>) -> anyhow::Result<()> {
    let labels = j.labels.clone();
    ensure::<ServiceAccount>(
        &Api::namespaced(m.clone(), SYSTEM_NAMESPACE),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": LOGS_SA, "namespace": SYSTEM_NAMESPACE, "labels": labels}}),
        labels_differ,
        j.on_member(&format!("ServiceAccount {SYSTEM_NAMESPACE}/{LOGS_SA}")),
        &mut j.report,
    )
    .await?;
    ensure::<ClusterRole>(
        &Api::all(m.clone()),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": LOGS_SA, "labels": labels},
               "rules": rbac::policy_rules(rbac::logs_on_member())}),
        fields(&["rules"]),
        j.on_member(&format!("ClusterRole {LOGS_SA} (read pods and their logs, nothing else)")),
        &mut j.report,
    )
    .await?;
    ensure::<ClusterRoleBinding>(
        &Api::all(m.clone()),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": LOGS_SA, "labels": labels},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": LOGS_SA},
               "subjects": [{"kind": "ServiceAccount", "name": LOGS_SA, "namespace": SYSTEM_NAMESPACE}]}),
        fields(&["roleRef", "subjects"]),
        j.on_member(&format!("ClusterRoleBinding {LOGS_SA}")),
        &mut j.report,
    )
    .await?;
    Ok(())
}

/// Secret `tekfed-system/tekfed-hub-kubeconfig` on the member: the hub at
/// `hub_endpoint` with a token of the agent's hub identity `agent_sa`.
pub(super) async fn agent_hub_kubeconfig(
    m: &Client,
    h: &Client,
    hub_endpoint: &Endpoint,
    agent_sa: &str,
    token_ttl: Duration,
    j: &mut Joining<'_>,
) -> anyhow::Result<()> {
    let secrets: Api<Secret> = Api::namespaced(m.clone(), SYSTEM_NAMESPACE);
    let existing = secret_kubeconfig(&secrets, AGENT_SECRET).await?;
    let token = token_for(
        h,
        hub_endpoint,
        SYSTEM_NAMESPACE,
        agent_sa,
        existing.as_deref(),
        token_ttl,
    )
    .await?;
    let kubeconfig = token_kubeconfig("hub", hub_endpoint, agent_sa, &token);
    ensure_kubeconfig_secret(
        &secrets,
        AGENT_SECRET,
        &j.labels,
        &kubeconfig,
        j.on_member(&format!(
            "Secret {SYSTEM_NAMESPACE}/{AGENT_SECRET} (the agent's hub kubeconfig)"
        )),
        &mut j.report,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hub_gets_no_pods_or_wildcards_and_secrets_only_by_name_on_a_member() {
        let rules = serde_json::to_value(rbac::policy_rules(rbac::hub_on_member())).unwrap();
        for rule in rules.as_array().unwrap() {
            let text = rule.to_string();
            assert!(!text.contains("pods") && !text.contains('*'), "{text}");
            if text.contains("secrets") {
                assert_eq!(
                    rule["verbs"],
                    serde_json::json!(["get", "create", "patch", "delete"]),
                    "{text}"
                );
            }
        }
    }
}
